"""Hand-written recursive-descent parser of the IR text format (grammar in docs/ir.md)."""

from __future__ import annotations

import math

from llmfab.compiler.formats import FLOAT32, Format, parse_format_name
from llmfab.compiler.ir import (
    REDUCE_OPS,
    Access,
    Affine,
    Binary,
    Cascade,
    CmpOp,
    Comparison,
    ComputeOp,
    Condition,
    Const,
    Einsum,
    Expr,
    Iteration,
    Merge,
    Rank,
    Reduction,
    Tensor,
    TensorRank,
    Unary,
)
from llmfab.compiler.ir_errors import IRError
from llmfab.compiler.lexer import Token, TokenKind, tokenize

_MERGES = {m.value: m for m in Merge}
_CMP = {c.value: c for c in CmpOp}
_UNARY_FUNCS = {"exp": ComputeOp.EXP, "sqrt": ComputeOp.SQRT, "rsqrt": ComputeOp.RSQRT, "sigmoid": ComputeOp.SIGMOID,
                "round": ComputeOp.ROUND}
_BINARY_FUNCS = {"max": ComputeOp.MAX, "min": ComputeOp.MIN}
_INFIX_ADD = {"+": ComputeOp.ADD, "-": ComputeOp.SUB}
_INFIX_MUL = {"*": ComputeOp.MUL, "/": ComputeOp.DIV}


def parse_cascade(text: str, source: str = "<text>", check: bool = True) -> Cascade:
    """Parse IR text into a Cascade; with `check`, also validate it (raises IRError)."""
    cascade = _Parser(tokenize(text, source), source).cascade()
    if check:
        from llmfab.compiler.validate import validate

        validate(cascade)
    return cascade


def parse_einsum(text: str, source: str = "<text>", fixed: frozenset[str] = frozenset()) -> Einsum:
    """Parse one Einsum statement (used by the TeAAL importer and tests)."""
    parser = _Parser(tokenize(text, source), source)
    einsum = parser.einsum(fixed)
    parser.skip_newlines()
    parser.expect_kind(TokenKind.END)
    return einsum


class _Parser:
    def __init__(self, tokens: list[Token], source: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.source = source

    # -------------------------------------------------------------- helpers
    @property
    def token(self) -> Token:
        return self.tokens[self.pos]

    def peek(self, offset: int = 1) -> Token:
        return self.tokens[min(self.pos + offset, len(self.tokens) - 1)]

    def error(self, message: str, token: Token | None = None) -> IRError:
        token = token or self.token
        return IRError(f"{self.source}:{token.line}:{token.column}: {message}")

    def advance(self) -> Token:
        token = self.token
        self.pos += 1
        return token

    def at(self, text: str) -> bool:
        return self.token.kind in (TokenKind.SYMBOL, TokenKind.NAME) and self.token.text == text

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.advance()
            return True
        return False

    def expect(self, text: str, what: str = "") -> Token:
        if not self.at(text):
            raise self.error(f"expected '{text}'{what} but found {self.token.describe()}")
        return self.advance()

    def expect_kind(self, kind: TokenKind, what: str = "") -> Token:
        if self.token.kind is not kind:
            raise self.error(f"expected {what or kind.value} but found {self.token.describe()}")
        return self.advance()

    def skip_newlines(self) -> None:
        while self.token.kind is TokenKind.NEWLINE:
            self.advance()

    def end_statement(self) -> None:
        if self.token.kind not in (TokenKind.NEWLINE, TokenKind.END):
            raise self.error(f"expected the end of the statement but found {self.token.describe()}")
        self.skip_newlines()

    # -------------------------------------------------------------- statements
    def cascade(self) -> Cascade:
        ranks, tensors, statements = [], [], []
        self.skip_newlines()
        while self.token.kind is not TokenKind.END:
            keyword = self.token.text if self.peek().text != "[" else ""
            if keyword == "rank":
                ranks.append(self.rank_decl())
            elif keyword == "tensor":
                tensors.append(self.tensor_decl())
            elif keyword == "iterate":
                statements.append(self.iteration())
            else:
                statements.append(self.einsum(frozenset()))
            self.end_statement()
        return Cascade(tuple(ranks), tuple(tensors), tuple(statements))

    def rank_decl(self) -> Rank:
        self.expect("rank")
        name = self.rank_name()
        size = None
        if self.accept("="):
            size = self.integer("a rank size")
        part_of = None
        if self.accept("part"):
            self.expect("of")
            part_of = self.rank_name()
        return Rank(name, size, part_of)

    def tensor_decl(self) -> Tensor:
        self.expect("tensor")
        name = self.expect_kind(TokenKind.NAME, "a tensor name").text
        self.expect("[")
        ranks = []
        while not self.at("]"):
            rank = self.rank_name()
            extra = self.integer("an extension") if self.accept("+") else 0
            ranks.append(TensorRank(rank, extra))
            if not self.accept(","):
                break
        self.expect("]", " to close the rank list")
        fmt = self.format() if self.accept(":") else FLOAT32
        return Tensor(name, tuple(ranks), fmt)

    def format(self) -> Format:
        token = self.expect_kind(TokenKind.NAME, "an element format such as float32")
        try:
            kind, bits = parse_format_name(token.text)
            params = []
            if self.accept("("):
                while not self.at(")"):
                    key = self.expect_kind(TokenKind.NAME, "a format parameter").text
                    self.expect("=")
                    value = self.advance().text
                    if self.accept(":"):
                        value += ":" + self.advance().text
                    params.append((key, value))
                    if not self.accept(","):
                        break
                self.expect(")")
            return Format(kind, bits, tuple(sorted(params)))
        except IRError as err:
            if str(err).startswith(self.source):
                raise
            raise self.error(str(err), token) from None

    def iteration(self) -> Iteration:
        self.expect("iterate")
        index = self.index_name()
        self.expect("over")
        rank = self.rank_name()
        until = self.condition() if self.accept("until") else None
        self.expect("{", " to open the iteration body")
        self.skip_newlines()
        init, body = [], []
        while not self.at("}"):
            if self.token.kind is TokenKind.END:
                raise self.error(f"iteration over {rank} is not closed; add '}}'")
            if self.accept("init"):
                if body:
                    raise self.error("init statements must come before the body statements")
                init.append(self.einsum(frozenset()))
            else:
                body.append(self.einsum(frozenset({index})))
            self.end_statement()
        self.expect("}")
        return Iteration(index, rank, tuple(body), tuple(init), until)

    def einsum(self, fixed: frozenset[str]) -> Einsum:
        start = self.token
        output = self.access()
        self.expect("=", " after the output of an Einsum")
        expr = self.expr()
        reductions = None
        where = order = group = None
        while self.token.kind is TokenKind.NAME:
            clause = self.token
            if self.accept("reduce") and reductions is None:
                reductions = [self.reduction()]
                while self.accept(","):
                    reductions.append(self.reduction())
            elif self.accept("where") and where is None:
                where = self.condition()
            elif self.accept("order") and order is None:
                self.expect("(")
                order = [] if self.at(")") else [self.index_name()]
                while self.accept(","):
                    order.append(self.index_name())
                self.expect(")")
            elif self.accept("group") and group is None:
                group = self.integer("a fusion group number")
            else:
                raise self.error(f"unexpected {clause.describe()}; expected reduce, where, order or group", clause)
        einsum = Einsum(output, expr, (), where, tuple(order) if order is not None else None, group)
        if reductions is None:
            # No reduce clause: every index absent from the output is summed (union), as in TeAAL.
            kept = output.index_names() | fixed
            reductions = [Reduction(n) for n in einsum.index_names() if n not in kept and n[0].islower()]
        names = [r.index for r in reductions]
        if len(set(names)) != len(names):
            raise self.error(f"Einsum {output.tensor}: an index is reduced twice in {names}", start)
        return Einsum(output, expr, tuple(reductions), where, einsum.loop_order, group)

    def reduction(self) -> Reduction:
        index = self.index_name()
        self.expect(":")
        token = self.expect_kind(TokenKind.NAME, "a reduction (sum, max, min, prod)")
        if token.text not in REDUCE_OPS:
            raise self.error(f"unknown reduction '{token.text}'; use sum, max, min or prod", token)
        return Reduction(index, REDUCE_OPS[token.text], self.merge(Merge.UNION))

    def merge(self, default: Merge) -> Merge:
        if not self.accept("{"):
            return default
        token = self.expect_kind(TokenKind.NAME, "a merge (intersect, union, right, pass)")
        if token.text not in _MERGES:
            raise self.error(f"unknown merge '{token.text}'; use intersect, union, right or pass", token)
        self.expect("}")
        return _MERGES[token.text]

    # -------------------------------------------------------------- expressions
    def expr(self) -> Expr:
        left = self.term()
        while self.token.text in _INFIX_ADD and self.token.kind is TokenKind.SYMBOL:
            op = _INFIX_ADD[self.advance().text]
            merge = self.merge(op.default_merge)
            left = Binary(op, left, self.term(), merge)
        return left

    def term(self) -> Expr:
        left = self.unary()
        while self.token.text in _INFIX_MUL and self.token.kind is TokenKind.SYMBOL:
            op = _INFIX_MUL[self.advance().text]
            merge = self.merge(op.default_merge)
            left = Binary(op, left, self.unary(), merge)
        return left

    def unary(self) -> Expr:
        if self.accept("-"):
            if self.token.kind is TokenKind.NUMBER or self.at("inf"):
                value = self.primary()
                return Const(-value.value)
            return Unary(ComputeOp.NEG, self.unary())
        return self.primary()

    def primary(self) -> Expr:
        token = self.token
        if token.kind is TokenKind.NUMBER:
            self.advance()
            return Const(float(token.text))
        if self.accept("("):
            inner = self.expr()
            self.expect(")", " to close the parenthesis")
            return inner
        if token.kind is not TokenKind.NAME:
            raise self.error(f"expected a tensor, number or function but found {token.describe()}")
        if self.peek().text == "[":
            return self.access()
        if token.text == "inf":
            self.advance()
            return Const(math.inf)
        self.advance()
        if token.text in _UNARY_FUNCS:
            self.expect("(", f" after {token.text}")
            operand = self.expr()
            self.expect(")", f" to close {token.text}(...)")
            return Unary(_UNARY_FUNCS[token.text], operand)
        if token.text in _BINARY_FUNCS or token.text == "take":
            return self.binary_call(token)
        raise self.error(
            f"unknown function or tensor '{token.text}'; functions are exp, sqrt, rsqrt, sigmoid, round, "
            "max, min, take, and a tensor read needs [indices]",
            token,
        )

    def binary_call(self, name: Token) -> Expr:
        op = _BINARY_FUNCS.get(name.text, ComputeOp.TAKE_LEFT)
        merge = self.merge(op.default_merge)
        self.expect("(", f" after {name.text}")
        args = [self.expr()]
        while self.accept(","):
            args.append(self.expr())
        self.expect(")", f" to close {name.text}(...)")
        if name.text == "take":
            if len(args) != 3 or not isinstance(args[2], Const) or args[2].value not in (0.0, 1.0):
                raise self.error("take needs two operands and the index of the one to keep: take(a, b, 0)", name)
            op = ComputeOp.TAKE_LEFT if args[2].value == 0.0 else ComputeOp.TAKE_RIGHT
            args = args[:2]
        if len(args) != 2:
            raise self.error(f"{name.text} takes 2 operands, got {len(args)}", name)
        return Binary(op, args[0], args[1], merge)

    def access(self) -> Access:
        name = self.expect_kind(TokenKind.NAME, "a tensor name").text
        self.expect("[", f" after tensor {name}")
        indices = []
        while not self.at("]"):
            indices.append(self.affine())
            if not self.accept(","):
                break
        self.expect("]", f" to close the indices of {name}")
        return Access(name, tuple(indices))

    # -------------------------------------------------------------- index arithmetic
    def condition(self) -> Condition:
        clauses = [self.conjunction()]
        while self.accept("or"):
            clauses.append(self.conjunction())
        return Condition(tuple(clauses))

    def conjunction(self) -> tuple[Comparison, ...]:
        comparisons = self.comparison_chain()
        while self.accept("and"):
            comparisons += self.comparison_chain()
        return tuple(comparisons)

    def comparison_chain(self) -> list[Comparison]:
        left = self.affine()
        if self.token.text not in _CMP:
            raise self.error(f"expected a comparison (<, <=, ==, !=, >=, >) but found {self.token.describe()}")
        chain = []
        while self.token.text in _CMP and self.token.kind is TokenKind.SYMBOL:
            op = _CMP[self.advance().text]
            right = self.affine()
            chain.append(Comparison(left, op, right))
            left = right
        return chain

    def affine(self) -> Affine:
        sign = -1 if self.accept("-") else 1
        total = self.affine_term().scaled(sign)
        while self.token.kind is TokenKind.SYMBOL and self.token.text in "+-" and self.token.text:
            sign = 1 if self.advance().text == "+" else -1
            total = total + self.affine_term().scaled(sign)
        return total

    def affine_term(self) -> Affine:
        if self.token.kind is TokenKind.NUMBER:
            value = self.integer("an integer")
            if self.accept("*"):
                return Affine(((self.expect_kind(TokenKind.NAME, "an index").text, value),))
            return Affine.const(value)
        name = self.expect_kind(TokenKind.NAME, "an index, rank or integer").text
        if self.accept("*"):
            return Affine(((name, self.integer("an integer coefficient")),))
        return Affine.var(name)

    def integer(self, what: str) -> int:
        token = self.expect_kind(TokenKind.NUMBER, what)
        if not token.text.isdigit():
            raise self.error(f"expected {what} (a whole number) but found '{token.text}'", token)
        return int(token.text)

    def index_name(self) -> str:
        token = self.expect_kind(TokenKind.NAME, "an index")
        if not token.text[0].islower():
            raise self.error(f"index '{token.text}' must start with a lower-case letter", token)
        return token.text

    def rank_name(self) -> str:
        token = self.expect_kind(TokenKind.NAME, "a rank name")
        if not token.text[0].isupper():
            raise self.error(f"rank '{token.text}' must start with an upper-case letter", token)
        return token.text

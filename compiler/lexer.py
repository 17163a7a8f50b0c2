"""Tokens of the IR text format, each with its line and column for error messages."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from llmfab.compiler.ir_errors import IRError


class TokenKind(enum.Enum):
    NAME = "name"
    NUMBER = "number"
    SYMBOL = "symbol"
    NEWLINE = "end of line"
    END = "end of input"


@dataclass(frozen=True)
class Token:
    kind: TokenKind
    text: str
    line: int
    column: int

    def describe(self) -> str:
        if self.kind in (TokenKind.NEWLINE, TokenKind.END):
            return self.kind.value
        return f"'{self.text}'"


_TWO_CHAR = ("<=", ">=", "==", "!=")
_ONE_CHAR = "[](){},=:+-*/<>"


def tokenize(text: str, source: str = "<text>") -> list[Token]:
    """Split IR text into tokens; `#` starts a comment that runs to the end of the line."""
    tokens: list[Token] = []
    line, start_of_line, pos = 1, 0, 0
    while pos < len(text):
        char = text[pos]
        column = pos - start_of_line + 1
        if char == "\n":
            tokens.append(Token(TokenKind.NEWLINE, "\n", line, column))
            line, pos, start_of_line = line + 1, pos + 1, pos + 1
        elif char in " \t\r":
            pos += 1
        elif char == "#":
            while pos < len(text) and text[pos] != "\n":
                pos += 1
        elif char.isalpha() or char == "_":
            end = pos
            while end < len(text) and (text[end].isalnum() or text[end] == "_"):
                end += 1
            tokens.append(Token(TokenKind.NAME, text[pos:end], line, column))
            pos = end
        elif char.isdigit() or (char == "." and text[pos + 1 : pos + 2].isdigit()):
            end = _scan_number(text, pos)
            tokens.append(Token(TokenKind.NUMBER, text[pos:end], line, column))
            pos = end
        elif text[pos : pos + 2] in _TWO_CHAR:
            tokens.append(Token(TokenKind.SYMBOL, text[pos : pos + 2], line, column))
            pos += 2
        elif char in _ONE_CHAR:
            tokens.append(Token(TokenKind.SYMBOL, char, line, column))
            pos += 1
        else:
            raise IRError(f"{source}:{line}:{column}: unexpected character {char!r}")
    tokens.append(Token(TokenKind.END, "", line, pos - start_of_line + 1))
    return tokens


def _scan_number(text: str, pos: int) -> int:
    end = pos
    while end < len(text) and text[end].isdigit():
        end += 1
    if end < len(text) and text[end] == ".":
        end += 1
        while end < len(text) and text[end].isdigit():
            end += 1
    if end < len(text) and text[end] in "eE":
        exp_end = end + 1
        if exp_end < len(text) and text[exp_end] in "+-":
            exp_end += 1
        if exp_end < len(text) and text[exp_end].isdigit():
            end = exp_end
            while end < len(text) and text[end].isdigit():
                end += 1
    return end

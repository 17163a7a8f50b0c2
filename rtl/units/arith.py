"""Combinational Amaranth building blocks of the fixed-point primitives (docs/numerics.md §1).

Each function returns an Amaranth value computing, for every input, exactly the integer that its
namesake in `llmfab.sim.fixed_point` computes. Widths are derived from the operands, so callers
size their registers from `value.shape()`.
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth.hdl import Array, Const, Mux, Shape, Value, signed, unsigned


def round_shift(value: Value, shift: int) -> Value:
    """`rshr(v, s)` for a constant `s >= 0`: `(v + 2**(s-1)) >> s` (round half up, arithmetic)."""
    if shift < 0:
        raise ValueError("constant round_shift takes a right shift; use shift_round_saturate for signed shifts")
    if shift == 0:
        return value
    return (value + (1 << (shift - 1))) >> shift


def round_shift_by(value: Value, shift: Value) -> Value:
    """`rshr(v, s)` for an unsigned shift signal `s`: `((v >> (s - 1)) + 1) >> 1`, `v` for `s = 0`.

    Equal to `(v + 2**(s-1)) >> s` because `floor(floor(y) / 2) = floor(y / 2)`; it needs one
    barrel shifter and no variable rounding constant.
    """
    shifted = ((value >> (shift - 1)[:len(shift)]) + 1) >> 1
    return Mux(shift == 0, value, shifted)


def saturate(value: Value, bits: int, is_signed: bool = True) -> Value:
    """Clamp to a `bits`-wide signed (or unsigned) range, as `llmfab.sim.fixed_point.saturate`."""
    lo = -(1 << (bits - 1)) if is_signed else 0
    hi = (1 << (bits - 1)) - 1 if is_signed else (1 << bits) - 1
    return clamp(value, lo, hi)


def clamp(value: Value, lo: int, hi: int) -> Value:
    """`min(max(v, lo), hi)` in the narrowest shape holding `[lo, hi]`. A bound the value's shape
    cannot cross gets no comparator (Verilator rejects comparisons that are always false)."""
    shape = shape_for(lo, hi)
    result = value[:shape.width].as_signed() if shape.signed else value[:shape.width].as_unsigned()
    own = value.shape()
    if (-(1 << (own.width - 1)) if own.signed else 0) < lo:
        result = Mux(value < lo, Const(lo, shape), result)
    if ((1 << (own.width - 1)) - 1 if own.signed else (1 << own.width) - 1) > hi:
        result = Mux(value > hi, Const(hi, shape), result)
    return result


def shape_for(lo: int, hi: int) -> Shape:
    """The smallest shape holding every integer in `[lo, hi]`."""
    if lo < 0:
        return signed(max((-lo - 1).bit_length(), hi.bit_length()) + 1)
    return unsigned(max(hi.bit_length(), 1))


def absolute(value: Value) -> Value:
    """`|v|` as an unsigned value of the input's width (exact for the most negative input)."""
    width = value.shape().width
    if not value.shape().signed:
        return value
    return Mux(value < 0, -value, value)[:width].as_unsigned()


def bit_length(value: Value) -> Value:
    """Leading-one position plus one of an unsigned value (0 for 0): a log-depth priority encoder."""
    bits = value.as_unsigned()
    width = bits.shape().width
    if width == 1:
        return bits[0]
    half = width // 2
    low, high = bits[:half], bits[half:]
    high_len = bit_length(high)
    return Mux(high.any(), high_len + half, bit_length(low))


def normalize16(value: Value, leading: Value) -> Value:
    """The top 16 bits of a positive unsigned `value` whose leading one is at bit `leading`
    (`normalize_mantissa(m, 16)[0]`): a left barrel shift bringing the leading one to bit 15."""
    width = max(value.shape().width, 16)
    distance = (Const(width - 1, unsigned(width.bit_length())) - leading)[:width.bit_length()]
    aligned = (value.as_unsigned() << distance)[:width]
    return aligned[width - 16:width]


def rom(table: Sequence[int], index: Value) -> Value:
    """A read-only table lookup (combinational; register its output in the next stage)."""
    lo, hi = min(table), max(table)
    shape = shape_for(lo, hi)
    return Array(Const(int(v), shape) for v in table)[index]


def maximum(a: Value, b: Value) -> Value:
    """`max(a, b)`."""
    return Mux(a > b, a, b)


def minimum(a: Value, b: Value) -> Value:
    """`min(a, b)`."""
    return Mux(a < b, a, b)


def shift_round_saturate(value: Value, shift: Value, bits: int) -> Value:
    """`sat_bits(rshr(v, s))` for a signed shift signal `s`: a right shift rounds half up, a left
    shift (`s < 0`) widens exactly before the saturation (shifts beyond `bits` saturate any
    nonzero value, so the left shift is capped there)."""
    right = round_shift_by(value, shift.as_unsigned()[:len(shift) - 1])
    amount = -shift
    left = value << Mux(amount > bits, bits, amount[:bits.bit_length()])[:bits.bit_length()]
    return saturate(Mux(shift >= 0, right, left), bits)


def shift_add_multiply(a: Value, w: Value) -> Value:
    """`a · w` for a narrow signed `w` as shift-and-add (§4.1): the partial products `a << k`
    selected by the bits of `w`, the sign bit's subtracted. No multiplier is inferred, so
    synthesis builds it from LUTs and leaves the DSPs for the wide products."""
    width = len(w)
    total = -Mux(w[width - 1], a << (width - 1), 0) if w.shape().signed else Mux(w[width - 1], a << (width - 1), 0)
    for k in range(width - 1):
        total = total + Mux(w[k], a << k, 0)
    return total

"""The calculator tool: exact arithmetic on a parsed expression, never `eval`.

    >>> calculate("12,345 × 6,789")
    '83810205'
    >>> calculate("1 / 3")
    '0.3333333333 (rounded)'
    >>> calculate("(2.5 + 0.1) * 4")
    '10.4'

Design choices:
- Python's own parser (`ast`) reads the expression and only a whitelist of nodes is
  evaluated: numbers, + - * / // % **, unary ±, parentheses. Names, calls, attributes,
  subscripts and every other node are refused, so nothing but arithmetic can run.
- Numbers are `fractions.Fraction`: a decimal literal is read from its source text
  ("0.1" is 1/10, not the float 0.1000000000000000055…), so + - * / are exact. A power with a
  non-integer exponent has no exact value in general; it is computed in floating point and
  the result is marked rounded.
- The typography people (and models) write is accepted: × ÷ − and the letter x between
  numbers, ^ for power, thousands separators (1,234,567), a trailing "=".
- Guards: expressions of at most MAX_CHARS characters, exponents of at most MAX_EXPONENT in
  size, and every intermediate numerator and denominator under MAX_BITS bits, so a request
  such as 9**9**9 fails at once with a message instead of eating the memory.
- Output: an integer as an integer (past SHOWN_DIGITS digits in scientific notation, marked
  rounded); otherwise a decimal of at most SIGNIFICANT digits, marked rounded when it is not
  exact.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from decimal import Context, Decimal
from fractions import Fraction

from lmforge.errors import LmforgeError

MAX_CHARS = 1_000
MAX_EXPONENT = 10_000
MAX_BITS = 10_000  # about 3,000 decimal digits
SIGNIFICANT = 10
SHOWN_DIGITS = 30
_TYPOGRAPHY = str.maketrans({"×": "*", "÷": "/", "−": "-", "–": "-", "^": "**", "·": "*"})
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TIMES_X = re.compile(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])")
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
           ast.Mod: "%", ast.Pow: "**"}


class CalculatorError(LmforgeError):
    """The expression is not arithmetic, or its value cannot be computed."""


def calculate(expression: str) -> str:
    """The value of `expression`, formatted (see `format_number`)."""
    value, exact = evaluate(expression)
    return format_number(value, exact)


def evaluate(expression: str) -> tuple[Fraction, bool]:
    """(value, whether it is exact) of an arithmetic expression."""
    text = normalize(expression)
    if not text:
        raise CalculatorError("the expression is empty; write arithmetic such as 12 * (3 + 4)")
    if len(text) > MAX_CHARS:
        raise CalculatorError(f"the expression has {len(text)} characters; the calculator "
                              f"takes at most {MAX_CHARS}")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        raise CalculatorError(f"{expression!r} is not an arithmetic expression; use numbers, "
                              "+ - * / ** % and parentheses") from None
    try:
        return _Evaluator(text).visit(tree.body)
    except RecursionError:
        raise CalculatorError("the expression is nested too deeply") from None


def normalize(expression: str) -> str:
    """The expression in Python's spelling: × ÷ − ^ and 'x' as operators, no thousands
    separators, no trailing '='."""
    text = expression.strip().rstrip("=").strip().translate(_TYPOGRAPHY)
    return _TIMES_X.sub(" * ", _THOUSANDS.sub("", text))


class _Evaluator:
    """Walks the whitelisted nodes; each visit returns (value, exact)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def visit(self, node: ast.AST) -> tuple[Fraction, bool]:
        if isinstance(node, ast.Constant):
            return self.number(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value, exact = self.visit(node.operand)
            return (-value if isinstance(node.op, ast.USub) else value), exact
        if isinstance(node, ast.BinOp) and type(node.op) in _SYMBOL:
            return self.binary(node)
        raise CalculatorError(f"{self.segment(node)!r} is not arithmetic; the calculator takes "
                              "numbers, + - * / // % ** and parentheses")

    def number(self, node: ast.Constant) -> tuple[Fraction, bool]:
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError(f"{self.segment(node)!r} is not a number")
        if isinstance(node.value, int):
            return _checked(Fraction(node.value)), True
        # the literal's own digits: Fraction("0.1") is 1/10 exactly
        return _checked(Fraction(self.segment(node).replace("_", ""))), True

    def binary(self, node: ast.BinOp) -> tuple[Fraction, bool]:
        (a, exact_a), (b, exact_b) = self.visit(node.left), self.visit(node.right)
        exact = exact_a and exact_b
        if isinstance(node.op, ast.Pow):
            value, exact_pow = _power(a, b)
            return _checked(value), exact and exact_pow
        if b == 0 and isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod):
            raise CalculatorError(f"division by zero in {self.segment(node)!r}")
        return _checked(_BINARY[type(node.op)](a, b)), exact

    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or ast.unparse(node)


def _power(base: Fraction, exponent: Fraction) -> tuple[Fraction, bool]:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"the exponent {_short(exponent)} is too large (at most "
                              f"{MAX_EXPONENT})")
    if base == 0 and exponent < 0:
        raise CalculatorError("division by zero: 0 raised to a negative power")
    if exponent.denominator == 1:
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())
        if bits * abs(exponent.numerator) > MAX_BITS:
            raise CalculatorError(f"the result of a power is too large (over {MAX_BITS} bits)")
        return base ** exponent.numerator, True
    if base < 0:
        raise CalculatorError("a negative number raised to a fractional power is not a real "
                              "number")
    try:
        value = math.pow(float(base), float(exponent))
    except OverflowError:
        raise CalculatorError("the result of a power is too large") from None
    return Fraction(value), False


def _checked(value: Fraction) -> Fraction:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_BITS:
        raise CalculatorError(f"a number in the calculation is too large (over {MAX_BITS} "
                              "bits)")
    return value


def _short(value: Fraction) -> str:
    return format_number(value, True).split(" ")[0]


def format_number(value: Fraction, exact: bool = True) -> str:
    """An integer as an integer; otherwise at most SIGNIFICANT significant digits, with
    " (rounded)" when the shown number is not the exact value."""
    if value.denominator == 1 and len(str(abs(value.numerator))) <= SHOWN_DIGITS:
        return str(value.numerator) + ("" if exact else " (rounded)")
    context = Context(prec=SIGNIFICANT)
    shown = context.divide(Decimal(value.numerator), Decimal(value.denominator))
    rounded = not exact or Fraction(shown) != value
    if shown == 0:
        text = "0"
    elif Decimal("1e-6") <= abs(shown) < Decimal(10) ** SHOWN_DIGITS:
        text = format(shown, "f")
        text = text.rstrip("0").rstrip(".") if "." in text else text
    else:
        mantissa, exponent = f"{shown:e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
        text = f"{mantissa}e{int(exponent)}"
    return text + (" (rounded)" if rounded else "")

"""The ``load`` policy of an agent: a small arithmetic language over load signals.

An agent's load is what it reports to the LiveKit server and compares with its threshold. It is
the declarative form of the SDK's ``load_fnc``::

    load: cpu                               # host/cgroup CPU share, 0..1 (the default)
    load: jobs                              # running jobs / max_jobs
    load: "max(cpu, jobs, 0.5 * memory)"    # any expression over the signals

Grammar (whitespace is free)::

    expr   := term ('+' term)*
    term   := factor ('*' factor)*
    factor := NUMBER | SIGNAL | FUNC '(' expr (',' expr)* ')' | '(' expr ')'
    SIGNAL := cpu | memory | jobs
    FUNC   := max | min

It is parsed by a hand-written recursive-descent parser (never ``eval``) into a tiny tree that
prints back in one canonical form, so cosmetic rewrites of the same expression compare equal.
Evaluation clamps the result to [0, 1], the range the server expects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

SIGNALS = ("cpu", "memory", "jobs")
FUNCTIONS = ("max", "min")
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([A-Za-z_][A-Za-z_0-9]*)|(\S))")


class LoadExprError(ValueError):
    """A load expression is malformed; ``offset`` is the 0-based position in the text."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True)
class Num:
    """A constant."""

    value: float

    def __str__(self) -> str:
        return _fmt(self.value)


@dataclass(frozen=True)
class Signal:
    """One of ``cpu``, ``memory``, ``jobs``."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Call:
    """``max(...)`` or ``min(...)``."""

    func: str
    args: tuple[Expr, ...]

    def __str__(self) -> str:
        return f"{self.func}({', '.join(str(a) for a in self.args)})"


@dataclass(frozen=True)
class BinOp:
    """``left + right`` or ``left * right``."""

    op: str
    left: Expr
    right: Expr

    def __str__(self) -> str:
        if self.op == "+":
            return f"{self.left} + {self.right}"
        return f"{_wrap_sum(self.left)} * {_wrap_sum(self.right)}"


Expr = Num | Signal | Call | BinOp


def _wrap_sum(expr: Expr) -> str:
    return f"({expr})" if isinstance(expr, BinOp) and expr.op == "+" else str(expr)


def _fmt(value: float) -> str:
    """Plain decimal notation (the grammar has no exponents): 1e-05 -> 0.00001."""
    if value == int(value):
        return str(int(value))
    return format(Decimal(repr(value)), "f")


def parse(text: str) -> Expr:
    """Parse a load expression.

    Raises:
        LoadExprError: the text is not a valid expression; ``offset`` points at the problem.
    """
    return _Parser(text).parse()


def canonical(text: str) -> str:
    """The canonical spelling of an expression (``"max( cpu,jobs )"`` -> ``"max(cpu, jobs)"``)."""
    return str(parse(text))


def signals_used(expr: Expr) -> frozenset[str]:
    """Which signals an expression reads."""
    if isinstance(expr, Signal):
        return frozenset({expr.name})
    if isinstance(expr, Call):
        return frozenset().union(*(signals_used(a) for a in expr.args))
    if isinstance(expr, BinOp):
        return signals_used(expr.left) | signals_used(expr.right)
    return frozenset()


def evaluate(expr: Expr, signals: Mapping[str, float]) -> float:
    """Evaluate with the given signal values, clamped to [0, 1]."""
    return min(1.0, max(0.0, _eval(expr, signals)))


def _eval(expr: Expr, signals: Mapping[str, float]) -> float:
    if isinstance(expr, Num):
        return expr.value
    if isinstance(expr, Signal):
        return signals[expr.name]
    if isinstance(expr, Call):
        values = [_eval(a, signals) for a in expr.args]
        return max(values) if expr.func == "max" else min(values)
    left, right = _eval(expr.left, signals), _eval(expr.right, signals)
    return left + right if expr.op == "+" else left * right


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, offset)
        pos = 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:  # only trailing whitespace is left
                break
            number, name, other = match.groups()
            start = match.start(match.lastindex or 0)
            if number is not None:
                self.tokens.append(("num", number, start))
            elif name is not None:
                self.tokens.append(("name", name, start))
            else:
                self.tokens.append(("op", other, start))
            pos = match.end()
        self.index = 0

    def peek(self) -> tuple[str, str, int]:
        if self.index < len(self.tokens):
            return self.tokens[self.index]
        return ("end", "", len(self.text))

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        self.index += 1
        return token

    def expect(self, op: str) -> None:
        kind, text, offset = self.take()
        if kind != "op" or text != op:
            found = "the end of the expression" if kind == "end" else repr(text)
            raise LoadExprError(f"expected {op!r}, found {found}", offset)

    def parse(self) -> Expr:
        if not self.tokens:
            raise LoadExprError("empty load expression; use cpu, memory, jobs or an expression", 0)
        expr = self.expr()
        kind, text, offset = self.peek()
        if kind != "end":
            raise LoadExprError(f"unexpected {text!r}", offset)
        return expr

    def expr(self) -> Expr:
        left = self.term()
        while self.peek()[:2] == ("op", "+"):
            self.take()
            left = BinOp("+", left, self.term())
        return left

    def term(self) -> Expr:
        left = self.factor()
        while self.peek()[:2] == ("op", "*"):
            self.take()
            left = BinOp("*", left, self.factor())
        return left

    def factor(self) -> Expr:
        kind, text, offset = self.take()
        if kind == "num":
            return Num(float(text))
        if kind == "name":
            if text in SIGNALS:
                return Signal(text)
            if text in FUNCTIONS:
                self.expect("(")
                args = [self.expr()]
                while self.peek()[:2] == ("op", ","):
                    self.take()
                    args.append(self.expr())
                self.expect(")")
                return Call(text, tuple(args))
            raise LoadExprError(
                f"unknown name {text!r}; signals are {', '.join(SIGNALS)} and functions are "
                f"{', '.join(FUNCTIONS)}",
                offset,
            )
        if kind == "op" and text == "(":
            inner = self.expr()
            self.expect(")")
            return inner
        if kind == "op" and text == "-":
            raise LoadExprError("negative numbers and subtraction are not supported", offset)
        found = "the end of the expression" if kind == "end" else repr(text)
        raise LoadExprError(f"expected a number, a signal or a function, found {found}", offset)

"""A tiny, safe parser for boolean meta rules such as ``KW_DOWN && ALL_USERS && !HOWTO``.

Grammar (no eval, no arithmetic, nothing but names and the three operators):

    expr   := and ('||' and)*
    and    := unary ('&&' unary)*
    unary  := '!' unary | atom
    atom   := NAME | '(' expr ')'
    NAME   := [A-Z][A-Z0-9_]*
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Set
from dataclasses import dataclass

_TOKEN = re.compile(r"\s*(?:(\&\&)|(\|\|)|(!)|(\()|(\))|([A-Z][A-Z0-9_]*))")
MAX_DEPTH = 50


class MetaSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Name:
    name: str


@dataclass(frozen=True)
class Not:
    operand: Expr


@dataclass(frozen=True)
class And:
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Or:
    left: Expr
    right: Expr


Expr = Name | Not | And | Or


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise MetaSyntaxError(f"unexpected {text[pos:].strip()[:20]!r} at column {pos + 1}")
        out.append(next(g for g in match.groups() if g is not None))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise MetaSyntaxError("expression ends too early")
        self.pos += 1
        return token

    def expr(self) -> Expr:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise MetaSyntaxError(f"nested deeper than {MAX_DEPTH}")
        node = self.conj()
        while self.peek() == "||":
            self.take()
            node = Or(node, self.conj())
        self.depth -= 1
        return node

    def conj(self) -> Expr:
        node = self.unary()
        while self.peek() == "&&":
            self.take()
            node = And(node, self.unary())
        return node

    def unary(self) -> Expr:
        if self.peek() == "!":
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise MetaSyntaxError(f"nested deeper than {MAX_DEPTH}")
            node = Not(self.unary())
            self.depth -= 1
            return node
        return self.atom()

    def atom(self) -> Expr:
        token = self.take()
        if token == "(":
            node = self.expr()
            if self.take() != ")":
                raise MetaSyntaxError("missing ')'")
            return node
        if token in ("&&", "||", ")", "!"):
            raise MetaSyntaxError(f"expected a rule name, found {token!r}")
        return Name(token)


def parse_meta(text: str) -> Expr:
    """Parse a meta expression or raise MetaSyntaxError saying what is wrong."""
    tokens = _tokens(text)
    if not tokens:
        raise MetaSyntaxError("empty expression")
    parser = _Parser(tokens)
    node = parser.expr()
    if parser.peek() is not None:
        raise MetaSyntaxError(f"unexpected {parser.peek()!r} after a complete expression")
    return node


def names_in(expr: Expr) -> Iterator[str]:
    stack: list[Expr] = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, Name):
            yield node.name
        elif isinstance(node, Not):
            stack.append(node.operand)
        else:
            stack.extend((node.left, node.right))


def evaluate(expr: Expr, fired: Set[str]) -> bool:
    if isinstance(expr, Name):
        return expr.name in fired
    if isinstance(expr, Not):
        return not evaluate(expr.operand, fired)
    if isinstance(expr, And):
        return evaluate(expr.left, fired) and evaluate(expr.right, fired)
    return evaluate(expr.left, fired) or evaluate(expr.right, fired)

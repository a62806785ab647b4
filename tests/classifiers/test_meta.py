from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from classifiers.meta import And, Expr, MetaSyntaxError, Name, Not, Or, evaluate, parse_meta

NAMES = ["A", "B_2", "KW_DOWN", "ALL_USERS"]


def _render(expr: Expr) -> str:
    if isinstance(expr, Name):
        return expr.name
    if isinstance(expr, Not):
        return f"!({_render(expr.operand)})"
    op = "&&" if isinstance(expr, And) else "||"
    return f"({_render(expr.left)} {op} {_render(expr.right)})"


def _truth(expr: Expr, fired: frozenset[str]) -> bool:
    if isinstance(expr, Name):
        return expr.name in fired
    if isinstance(expr, Not):
        return not _truth(expr.operand, fired)
    if isinstance(expr, And):
        return _truth(expr.left, fired) and _truth(expr.right, fired)
    return _truth(expr.left, fired) or _truth(expr.right, fired)


exprs: st.SearchStrategy[Expr] = st.recursive(
    st.sampled_from(NAMES).map(Name),
    lambda inner: st.one_of(
        inner.map(Not),
        st.tuples(inner, inner).map(lambda t: And(*t)),
        st.tuples(inner, inner).map(lambda t: Or(*t)),
    ),
    max_leaves=12,
)


@given(exprs, st.frozensets(st.sampled_from(NAMES)))
def test_meta_parser_round_trips_any_expression_to_the_same_truth(
    expr: Expr, fired: frozenset[str]
) -> None:
    assert evaluate(parse_meta(_render(expr)), fired) == _truth(expr, fired)


def test_meta_and_binds_tighter_than_or_and_not_tightest() -> None:
    expr = parse_meta("A || B_2 && !A")
    assert evaluate(expr, {"A"}) is True
    assert evaluate(expr, {"B_2"}) is True
    assert evaluate(parse_meta("!A && B_2"), {"B_2"}) is True


@pytest.mark.parametrize(
    "text",
    [
        "",
        "A &&",
        "&& A",
        "A B",
        "(A",
        "A)",
        "a && b",
        "A & B",
        "__import__('os')",
        "A || || B",
        "1 + 1",
        "!" * 60 + "A",
    ],
)
def test_meta_parser_rejects_anything_but_names_and_operators(text: str) -> None:
    with pytest.raises(MetaSyntaxError):
        parse_meta(text)


@given(st.text(max_size=40))
def test_meta_parser_never_raises_anything_but_syntax_errors(text: str) -> None:
    try:
        parse_meta(text)
    except MetaSyntaxError:
        pass

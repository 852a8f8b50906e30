"""An audience's filter: SQL-like conditions on the profile's fields, parsed, checked, then rebuilt with parameters.

The language: comparisons `=`, `!=` (`<>`), `<`, `<=`, `>`, `>=` between a field and a literal, `in (...)` and
`not in (...)` with literals, `is null`, `is not null`, a boolean field alone, joined by `and`, `or`, `not` and
parentheses; string literals in single quotes, numbers, `true` and `false`.

sqlglot parses the text into a tree; `parse` walks it and accepts only the node kinds above, only the fields it
is given (the profile's columns, so a field the profile gains is known at once) and only literals whose kind fits
the field's. It then writes the SQL itself: each field quoted from the known list, each literal a `?` parameter.
The user's text never reaches SQL as text, and everything else — a second statement after `;`, a comment, a
function call, a subquery, a column against a column — is refused before any query runs, in one line that names
the field (with close matches) or the construct.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

Kind = Literal["number", "text", "bool", "time"]
COMPARISONS: dict[type[exp.Expr], str] = {exp.EQ: "=", exp.NEQ: "!=", exp.LT: "<", exp.LTE: "<=",
                                                 exp.GT: ">", exp.GTE: ">="}
MIRRORED = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}  # `1000 < x` is `x > 1000`
LITERAL_KINDS: dict[Kind, tuple[str, ...]] = {"number": ("number",), "text": ("text",), "bool": ("bool",),
                                              "time": ("text",)}  # a time is compared with an ISO 8601 string


class FilterError(ValueError):
    """A filter refused: the message says why, in one line."""


@dataclass(frozen=True)
class Filter:
    """The condition to put after WHERE, and its parameters in order."""

    text: str
    sql: str
    params: tuple[Any, ...]


def parse(text: str, fields: Mapping[str, Kind]) -> Filter:
    """The checked, parameterised condition of `text` over `fields` (name → kind); FilterError otherwise."""
    tree = _tree(text)
    params: list[Any] = []
    sql = _Builder(fields, params).condition(tree)
    return Filter(text, sql, tuple(params))


def _tree(text: str) -> exp.Expr:
    if not text or not text.strip():
        raise FilterError("the filter is empty: e.g. churn_band = 'high' and clv_12m > 1000")
    try:
        trees = sqlglot.parse(text, dialect="duckdb")
    except (ParseError, TokenError) as e:
        first = str(e).splitlines()[0] if str(e) else "cannot be parsed"
        raise FilterError(f"the filter does not parse: {first}") from None
    found = [t for t in trees if t is not None]
    if len(found) != 1:
        raise FilterError("one condition only: ';' (a second statement) is not part of the filter language")
    tree: exp.Expr = found[0]
    if any(node.comments for node in tree.walk()):
        raise FilterError("comments (-- or /* */) are not part of the filter language")
    return tree


def _literal(node: exp.Expr) -> tuple[str, Any]:
    """(kind, value) of a literal node; FilterError for anything else."""
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
        kind, value = _literal(node.this)
        return kind, -value
    if isinstance(node, exp.Boolean):
        return "bool", bool(node.this)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return "text", node.this
        number = float(node.this)
        return "number", int(number) if number.is_integer() and "." not in node.this else number
    if isinstance(node, exp.Null):
        raise FilterError("compare with null using `is null` or `is not null`")
    raise FilterError(f"only literals (text in single quotes, numbers, true, false) go here, not {_shown(node)}")


def _shown(node: exp.Expr) -> str:
    """A node for an error message: its kind and a short excerpt of its SQL."""
    sql = node.sql(dialect="duckdb")
    return f"{node.key} `{sql[:60]}{'…' if len(sql) > 60 else ''}`"


class _Builder:
    def __init__(self, fields: Mapping[str, Kind], params: list[Any]) -> None:
        self.fields = fields
        self.params = params

    def condition(self, node: exp.Expr) -> str:
        if isinstance(node, exp.And | exp.Or):
            word = "AND" if isinstance(node, exp.And) else "OR"
            return f"({self.condition(node.this)} {word} {self.condition(node.expression)})"
        if isinstance(node, exp.Not):
            return f"(NOT {self.condition(node.this)})"
        if isinstance(node, exp.Paren):
            return self.condition(node.this)
        if type(node) in COMPARISONS:
            return self._comparison(node)
        if isinstance(node, exp.In):
            return self._in(node)
        if isinstance(node, exp.Is):
            if not isinstance(node.expression, exp.Null):
                raise FilterError("`is` takes null only: `is null` or `is not null`")
            return f"({self._field(node.this)[0]} IS NULL)"
        if isinstance(node, exp.Column):
            name, kind = self._field(node)
            if kind != "bool":
                raise FilterError(f"field {node.name} is {kind}, not true/false: compare it, e.g. {node.name} = ...")
            return f"({name} IS TRUE)"
        raise FilterError(f"unsupported construct: {_shown(node)}; the filter language has comparisons "
                          "(= != < <= > >=), in (...), is [not] null, and, or, not, parentheses")

    def _field(self, node: exp.Expr) -> tuple[str, Kind]:
        """The quoted name and kind of a known field; FilterError naming close matches otherwise."""
        if not isinstance(node, exp.Column) or node.table or not isinstance(node.this, exp.Identifier):
            raise FilterError(f"a field name is expected here, not {_shown(node)}")
        name = node.name
        if name not in self.fields:
            close = difflib.get_close_matches(name, list(self.fields), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `c360 audience fields` lists them"
            raise FilterError(f"unknown field {name!r}{hint}")
        return '"' + name.replace('"', '""') + '"', self.fields[name]

    def _bind(self, field: str, kind: Kind, node: exp.Expr) -> str:
        literal_kind, value = _literal(node)
        if literal_kind not in LITERAL_KINDS[kind]:
            raise FilterError(f"field {field} is {kind}: {_shown(node)} is {literal_kind}")
        self.params.append(value)
        return "?"

    def _comparison(self, node: exp.Expr) -> str:
        op = COMPARISONS[type(node)]
        left, right = node.this, node.expression
        if not isinstance(left, exp.Column) and isinstance(right, exp.Column):
            left, right, op = right, left, MIRRORED[op]
        quoted, kind = self._field(left)
        return f"({quoted} {op} {self._bind(left.name, kind, right)})"

    def _in(self, node: exp.In) -> str:
        if node.args.get("query") or node.args.get("unnest") or node.args.get("field"):
            raise FilterError("in (...) takes a list of literals only, not a subquery")
        quoted, kind = self._field(node.this)
        if not node.expressions:
            raise FilterError("in (...) needs at least one value")
        marks = ", ".join(self._bind(node.this.name, kind, item) for item in node.expressions)
        return f"({quoted} IN ({marks}))"

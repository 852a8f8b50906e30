"""The contract as a page for people loading their own company's exports and sending live events (`c360 contract`,
docs/CONTRACT.md)."""

from __future__ import annotations

from c360.core.contract import EVENT_KINDS, TABLES, Col, Table
from c360.features.event_log import MAX_BATCH

HEADER = """# Data contract

Generated from `c360/core/contract.py` by `c360 contract --out docs/CONTRACT.md`; a test keeps the two equal.

Each source table arrives as CSV files `<silo>/<table>*.csv` (UTF-8, header row, comma separated, empty field =
missing). Several files of one table are batches, loaded in name order; a file already loaded (same content) is
skipped. Timestamps are ISO 8601 (`2025-03-01`, `2025-03-01 10:00:00`, `2025-03-01T10:00:00Z`), stored as naive
UTC.

**A file is refused whole** (exit code 1, nothing of it loaded) when it is missing, not UTF-8, not well-formed CSV
(a row with the wrong number of fields, an unterminated quote) or lacks a required column.

**A row is quarantined** — kept in the `quarantine` table with file, row number, column, value, reason and the raw
row, never dropped — when a required value is missing, a value does not parse as its type, is outside its allowed
values or range, two timestamps of the row are out of order, its key repeats an earlier row of the file, or a
reference names a key its parent table never had. A key a later batch repeats is the row's new version: it replaces
the row, the old version kept in the table's history (an identical row changes nothing). A table's exports arrive
as a **snapshot** (each file is the whole table at the moment it was exported: a key it no longer holds is recorded
as deleted at the source then) or as an **increment** (new and changed rows); `c360 ingest --mode` overrides it.
References are checked against every parent row read, accepted, quarantined or deleted since, so one bad parent row
does not take its children with it. For every file: read = accepted + quarantined.
"""


def _rule(c: Col) -> str:
    rules = ["required" if c.required else "optional"]
    if c.allowed:
        rules.append("one of " + ", ".join(f"`{a}`" for a in c.allowed))
    if c.min is not None:
        rules.append(f"≥ {c.min:g}")
    if c.max is not None:
        rules.append(f"≤ {c.max:g}")
    return "; ".join(rules)


def _section(t: Table) -> str:
    lines = [f"## {t.id}", "", t.doc or "", "",
             f"Key: `{t.key}` (unique in a file; a later batch's row is its new version). Arrives as: {t.arrives}."]
    lines += [f"References: `{r.column}` → `{r.table}.{r.parent_column}`." for r in t.refs]
    lines += [f"Order: `{a}` ≤ `{b}` when both are present." for a, b in t.ordered]
    lines += ["", "| column | type | rule | meaning |", "|---|---|---|---|"]
    lines += [f"| `{c.name}` | {c.kind} | {_rule(c)} | {c.doc} |" for c in t.columns]
    return "\n".join(lines) + "\n"


EVENTS = f"""## Live events

`POST /events` (roles `service` and `admin`, a batch `{{"events": [...]}}` of up to {MAX_BATCH:,}) and `c360 events push
FILE.jsonl` (one event per line) take events: JSON objects
`{{"event_id": "...", "kind": "...", "at": "<ISO 8601>", "customer_id"?: "...", ...}}` carrying the columns of their
kind's table above. The kind sets its fixed columns, `at` fills its time column, and the row is checked by that
table's rules, as a file's row is; the table's key is required (`ticket_id` for a ticket). An event names its
customer by `customer_id` or by the source keys its row carries (`user_id`, `requester_email`, ...).

Each event is checked on its own: a batch is answered 200 with `accepted`, `duplicates` (an `event_id` already
logged: acknowledged, ignored), `suppressed` (an erased person's: dropped) and `rejected` (`index`, `event_id`,
`reason`). Accepted events are on disk (the event log, fsynced) before the answer; `c360 ingest` folds them into
their tables once, an *update* kind replacing the row with the same key, and puts the rejected ones in
`quarantine` with their reason. References are not checked for events.
"""


def _events() -> str:
    lines = ["| kind | table | `at` fills | sets | update | meaning |", "|---|---|---|---|---|---|"]
    for k in EVENT_KINDS:
        fixed = ", ".join(f"`{c}` = `{v}`" for c, v in k.fixed)
        lines.append(f"| `{k.name}` | {k.table} | {f'`{k.at}`' if k.at else '—'} | {fixed} | "
                     f"{'yes' if k.update else ''} | {k.doc} |")
    return EVENTS + "\n" + "\n".join(lines) + "\n"


def markdown() -> str:
    return HEADER + "\n" + "\n".join(_section(t) for t in TABLES) + "\n" + _events()

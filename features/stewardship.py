"""Data stewardship: a person's decisions that two records are, or are not, the same customer.

`c360 resolve link` and `unlink` record a decision in the warehouse (`identity_decisions`: when, link or unlink, the
two record ids in order, who, why). The latest decision on a pair is the one in force (`identity.decisions`), and
it takes effect at once: the last resolve's records and scored pairs are grouped again with it
(`identity.stored_inputs`, `identity.group_records`), under the usual id rules, so an unlink splits off the smaller
part and a link merges into the larger, recorded in `identity_events` with the cause `steward`. Every later
`c360 resolve` follows the decisions the same way, and learns from the links (`identity.labels`).

An unlink always holds: every edge respects the cuts, the shared keys' too (of two contacts of one CRM account
that a steward unlinked, the one whose key would close the path stays out of the account). A link may not: one
across two CRM accounts, or across an unlink (a new unlink that would break an earlier link); such a decision is
refused, and nothing is recorded. Repeating the decision in force records nothing either.

`review` lists the model's links closest to the threshold, with the comparison levels that scored them: the pairs
where a steward's answer (link or unlink) changes most.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd

from c360.core import warehouse
from c360.features import identity, linkage

if TYPE_CHECKING:
    from c360.features.live_identity import Ledger

Decision = Literal["link", "unlink"]


@dataclass(frozen=True)
class Decided:
    decision: Decision
    records: tuple[str, str]
    recorded: bool  # False when the same decision was already in force
    customers_before: tuple[str, ...]
    customers_after: tuple[str, ...]
    merges: int
    splits: int


def decide(con, decision: Decision, a: str, b: str, who: str, why: str, threshold: float,
           ledger: Ledger | None = None) -> Decided:
    """Record a steward's decision on records `a` and `b` ('<source>:<key>') and regroup the customers with it.

    Raises KeyError for a record the last resolve does not know, ValueError for a decision that cannot hold."""
    left, right = sorted((a, b))
    if left == right:
        raise ValueError(f"a record is always its own customer: {left}")
    before = _customers(con, [left, right])
    decided = identity.decisions(con)
    pair = (decided["record_id_l"] == left) & (decided["record_id_r"] == right)
    if (decided.loc[pair, "decision"] == decision).any():
        return Decided(decision, (left, right), False, before, before, 0, 0)
    row = pd.DataFrame([{"decision": decision, "record_id_l": left, "record_id_r": right, "who": who, "why": why}])
    in_force = pd.concat([decided[~pair], row], ignore_index=True)
    people, accounts, pairs = identity.stored_inputs(con)
    grouped = identity.group_records(people, accounts, pairs, threshold, in_force)
    broken = identity.unheld(grouped, in_force)
    if len(broken):
        raise ValueError("the decision cannot hold: " + "; ".join(_describe(broken)))
    assignment = identity.settle_ids(con, people, accounts, grouped, ledger, "steward", {}, row)
    if ledger is not None:  # live rows of a customer merged away move to the survivor
        ledger.settle(con)
    events = assignment.events["kind"].value_counts()
    return Decided(decision, (left, right), True, before, _customers(con, [left, right]),
                   int(events.get("merge", 0)), int(events.get("split", 0)))


def _customers(con, record_ids: list[str]) -> tuple[str, ...]:
    """The records' customers; KeyError naming the records the crosswalk does not hold."""
    found = dict(con.execute("SELECT record_id, customer_id FROM identity_crosswalk WHERE record_id IN "
                             "(SELECT unnest(?))", [record_ids]).fetchall()) \
        if warehouse.has_table(con, "identity_crosswalk") else {}
    missing = [r for r in record_ids if r not in found]
    if missing:
        raise KeyError(f"not in the crosswalk (run `c360 resolve` first?): {', '.join(missing)}")
    return tuple(found[r] for r in record_ids)


def _describe(broken: pd.DataFrame) -> list[str]:
    """The links that would no longer hold (an unlink always does)."""
    return [f"link {d.record_id_l} {d.record_id_r} would not hold (two CRM accounts, or an unlink between them)"
            for d in broken.itertuples(index=False)]


# ---------------------------------------------------------------- review


def review(con, model_path, threshold: float, limit: int) -> pd.DataFrame:
    """The model's links closest to `threshold` that no decision covers: record_id_l, record_id_r, their
    customers, match_probability, and per comparison the level that scored it and its match weight (`levels`)."""
    pairs = con.execute("""
        SELECT l.record_id_l, l.record_id_r, a.customer_id AS customer_id_l, b.customer_id AS customer_id_r,
               l.match_probability
        FROM identity_links l
        JOIN identity_crosswalk a ON a.record_id = l.record_id_l
        JOIN identity_crosswalk b ON b.record_id = l.record_id_r
        WHERE l.method = 'model' AND NOT EXISTS (
            SELECT 1 FROM identity_decisions d WHERE d.record_id_l = least(l.record_id_l, l.record_id_r)
                                                 AND d.record_id_r = greatest(l.record_id_l, l.record_id_r))
        ORDER BY abs(l.match_probability - $threshold), l.record_id_l, l.record_id_r
        LIMIT $limit""", {"threshold": threshold, "limit": limit}).df()
    if pairs.empty:
        return pairs.assign(levels=[])
    prepared = con.execute("SELECT * FROM identity_records").df()
    linker = linkage.load_linker(prepared, model_path)
    pairs["levels"] = [_levels(linkage.explain_pair(linker, prepared, left, right))
                       for left, right in pairs[["record_id_l", "record_id_r"]].itertuples(index=False)]
    return pairs


def _levels(waterfall: pd.DataFrame) -> list[dict]:
    """The comparison levels of a pair, without the values compared (`resolve explain A B` shows those)."""
    comparisons = waterfall[~waterfall["column_name"].isin(["Prior", "Final score"])]
    return comparisons[["column_name", "level", "match_weight"]].to_dict("records")

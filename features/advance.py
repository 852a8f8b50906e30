"""`c360 advance`: move a generated world forward by N weeks, with actions applied to chosen accounts.

The world is rebuilt chunk by chunk from its manifest (`generate.replay`: the same streams give the same accounts,
people and keys), then each chunk steps through the advances already made (their manifests in the ground truth,
`advance_<date>.json`, actions included) and the new one (`synth.advance.draw`). Each step draws from its own
streams, seeded from the seed, the chunk, `synth.advance.STREAM` and the step's first week, and takes keys of its
own (`StepIds`): the world's files and every figure of a seed stay as they were, and the same world, weeks and
actions give the same output. Nothing already written changes. A shift (`synth.advance.Shift`, e.g. a usage drop
in one region) holds from the step that names it on: a later step takes it from the manifest of the last.

Two shapes of the same step:
- a batch of source files, `<silo>/<table>_<date>.csv` (the step's first day), as each table's exports arrive
  (`contract.Table.arrives`): an increment table's new and changed rows, a snapshot table whole (the last export's
  rows with the step's changes; the CRM archives the contacts of the accounts lost in the step): the world's folder
  by default, so `c360 ingest --source` over it loads the new batch alone. A changed row (a ticket closed, a
  cancelled subscription) repeats its key: ingest takes it as the row's new version (`c360.features.versions`).
- a stream of events, one JSON object a line, ordered by time: `{"event_id", "kind", "at", ...}` with the columns of
  the kind's contract table (`contract.EVENT_KINDS`) but the one `at` fills and the ones the kind fixes. A row
  changed within the step is one event per change (a ticket opened, then closed); the last state of each key is the
  batch's row.

Ground truth, beside the world's (`ground_truth/advance_<date>_*.parquet`): `outcomes` (per account subscribed at
the step's start: its action, churn week, churned in the step, the probability it had, and the same without the
action: the counterfactual from the same churn draw), `effects` (each treated account's expected churn and revenue
over 90 days under every action, from the state at the step's start, as `treatment_effects.parquet`) and `records`
(who is who behind each new row).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from c360.core import contract
from c360.core.contract import ACTIONS, EVENT_KINDS
from c360.features.generate import TRUTH, TextSink, replay, write_silos
from c360.features.synth.advance import SHIFT_STREAM, STREAM, Chunk, Shift, Step, StepIds, draw
from c360.features.synth.silos import Silos
from c360.features.synth.world import HORIZON, OBSERVED, START

KEYS = ("account", "account_id")  # how an actions file names an account; customer ids are mapped before


class AdvanceError(ValueError):
    """The world or the actions cannot be advanced (no world, too far, unknown accounts or actions)."""


@dataclass(frozen=True)
class AdvanceReport:
    world: Path
    start: str  # the step's first day
    end: str  # the day after its last
    weeks: int
    rows: dict[str, int]  # batch file -> rows
    events: int
    treated: int
    subscribed: int  # accounts subscribed at the start
    churned: int  # of them, churned within the step


def label(week: int) -> str:
    return str((START + pd.Timedelta(weeks=week)).date())


def steps(world: Path) -> list[Step]:
    """The advances already made from `world`, in order."""
    found = []
    for path in sorted((world / TRUTH).glob("advance_*.json")):
        m = json.loads(path.read_text())
        shift = Shift.parse(m["shift"]) if m.get("shift") else None
        found.append(Step(m["first_week"], m["weeks"], pd.DataFrame(m["actions"], columns=["account", "action"]),
                          shift))
    return sorted(found, key=lambda s: s.first)


def advance(world: Path, weeks: int, actions: pd.DataFrame | None = None, out: Path | None = None,
            events: Path | None = None, on_chunk: Callable[[int], None] | None = None,
            shift: Shift | None = None) -> AdvanceReport:
    """Advance the world generated in `world` by `weeks` weeks, taking `actions` (account or account_id, action) at
    its start, under `shift` if given (it holds from this step on); write the batch to `out` and/or the events to
    `events` (one at least), and the truth to `world`."""
    if out is None and events is None:
        raise AdvanceError("nowhere to write: give a batch folder, an events file or both")
    if not (world / TRUTH / "manifest.json").is_file():
        raise AdvanceError(f"{world}: no generated world here (run `c360 generate` first)")
    done = steps(world)
    first = done[-1].end if done else OBSERVED
    if weeks < 1 or first + weeks > HORIZON:
        raise AdvanceError(f"the world is simulated {HORIZON - OBSERVED} weeks past its end, {first - OBSERVED} "
                           f"already advanced: {HORIZON - first} more at most, {weeks} asked")
    customers = pd.read_parquet(world / TRUTH / "customers.parquet", columns=["account", "account_id"])
    shift = shift or (done[-1].shift if done else None)
    step = Step(first, weeks, _accounts(actions, customers), shift)
    seed = json.loads((world / TRUTH / "manifest.json").read_text())["seed"]
    sink, tables, n, lost = TextSink(), [], {"treated": 0, "subscribed": 0, "churned": 0}, []
    batch = f"_{label(first)}"
    try:
        for chunk, rng, silos in _stepped(world, done, step, seed, customers):
            if chunk.builder.acc["account"].iloc[0] == 0:
                silos.tables["marketing/campaigns"] = step.campaigns().drop(columns="week")
            if out is not None:
                write_silos(sink, out, rng, silos.tables, 0.0, batch)
            if events is not None:
                tables.append(silos.tables)
            for name, df in chunk.truth.items():
                if len(df):
                    sink.write(world / TRUTH / f"advance_{label(first)}_{name}.parquet", df)
            o = chunk.truth["outcomes"]
            n["treated"] += int(o["action"].notna().sum())
            n["subscribed"] += len(o)
            n["churned"] += int(o["churned"].sum())
            lost.extend(o.loc[o["churned"], "account"])
            if on_chunk:
                on_chunk(len(chunk.builder.acc))
    finally:
        sink.close()
    n_events = write_events(events, tables, step) if events is not None else 0
    manifest = {"first_week": first, "weeks": weeks, "start": label(first), "end": label(step.end),
                "actions": step.actions.to_numpy().tolist(), "shift": str(shift) if shift else None}
    (world / TRUTH / f"advance_{label(first)}.json").write_text(json.dumps(manifest, indent=2))
    rows = {str(p.relative_to(out)): r for p, r in sink.rows.items() if p.suffix == ".csv"} if out else {}
    if out is not None:
        gone = customers.set_index("account")["account_id"].reindex(lost)
        rows |= {str(p.relative_to(out)): r for p, r in _snapshots(world, out, batch, set(gone)).items()}
    return AdvanceReport(world, label(first), label(step.end), weeks, rows, n_events, **n)


def _stepped(world: Path, done: list[Step], step: Step, seed: int, customers: pd.DataFrame
             ) -> Iterator[tuple[Chunk, np.random.Generator, Silos]]:
    """Each chunk after the steps already made, and the new step's rows of it."""
    known = customers.set_index("account")["account_id"]
    ids = {s.first: StepIds(s.first) for s in (*done, step)}  # a step's counters run on across chunks
    for rep in replay(world):
        chunk = Chunk.exported(rep.builder, rep.consent)
        if not np.array_equal(known.reindex(chunk.builder.acc["account"]).to_numpy(), chunk.builder.account_id):
            raise AdvanceError(f"{world}: the world does not rebuild from its manifest (generated by another "
                               "version, or edited)")
        for s in done:
            draw(chunk, s, _rng(seed, rep.k, s), ids[s.first], _rng(seed, rep.k, s, SHIFT_STREAM))
        rng = _rng(seed, rep.k, step)
        yield chunk, rng, draw(chunk, step, rng, ids[step.first], _rng(seed, rep.k, step, SHIFT_STREAM))


def _snapshots(world: Path, out: Path, batch: str, lost: set[str]) -> dict[Path, int]:
    """Make the step's file of each snapshot table (`Table.arrives`) the whole table at the step's end: the last
    export's rows (the latest earlier file in the world's folder or in `out`: a batch written to an empty folder
    still arrives whole), changed or added to by the step's; the CRM archives the contacts of the accounts lost in
    the step. Returns the rows of each file written."""
    written = {}
    for table in contract.TABLES:
        path = out / table.silo / f"{table.name}{batch}.csv"
        earlier = sorted((p for folder in {world, out} for p in (folder / table.silo).glob(f"{table.name}*.csv")
                          if p.name < path.name and p.stem[len(table.name):][:1] in ("", "_")),
                         key=lambda p: p.name)
        if table.arrives != "snapshot" or not earlier:
            continue
        parts = [_text(earlier[-1])] + ([_text(path)] if path.is_file() else [])
        whole = pd.concat(parts, ignore_index=True)
        key = whole[table.key]
        whole = whole[~key.duplicated(keep="last") | key.eq("")]  # a row changed in the step: its new state
        if table.id == "crm/contacts":
            whole = whole[~whole["account_id"].isin(lost)]
        whole.to_csv(path, index=False)
        written[path] = len(whole)
    return written


def _text(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _rng(seed: int, k: int, step: Step, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, k, STREAM, step.first, *stream])


def with_account_ids(con: duckdb.DuckDBPyConnection, actions: pd.DataFrame) -> pd.DataFrame:
    """Actions naming c360 customers (`customer_id`) named by their CRM account key instead (the crosswalk's)."""
    found = con.execute("""SELECT customer_id, min(source_key) AS account_id FROM identity_crosswalk
                           WHERE source = 'crm/accounts' AND customer_id IN (SELECT * FROM unnest($ids))
                           GROUP BY customer_id""", {"ids": actions["customer_id"].astype(str).tolist()}).df()
    mapped = actions.merge(found, on="customer_id", how="left")
    if mapped["account_id"].isna().any():
        raise AdvanceError(f"{int(mapped['account_id'].isna().sum())} customer id(s) not in the crosswalk "
                           "(run `c360 resolve` first?)")
    return mapped.drop(columns="customer_id")


def _accounts(actions: pd.DataFrame | None, customers: pd.DataFrame) -> pd.DataFrame:
    """The actions as (account, action), checked: known accounts, known actions, one action an account."""
    if actions is None or actions.empty:
        return pd.DataFrame({"account": pd.Series(dtype=int), "action": pd.Series(dtype=str)})
    key = next((k for k in KEYS if k in actions.columns), None)
    if key is None or "action" not in actions.columns:
        raise AdvanceError(f"actions need an `action` column and one of {', '.join(KEYS)} (or customer_id)")
    unknown = sorted(set(actions["action"]) - set(ACTIONS))
    if unknown:
        raise AdvanceError(f"unknown action(s) {', '.join(map(str, unknown[:5]))}; known: {', '.join(ACTIONS)}")
    if key == "account_id":
        accounts = actions["account_id"].map(customers.set_index("account_id")["account"])
    else:
        accounts = pd.to_numeric(actions["account"], errors="coerce").where(
            lambda a: a.isin(customers["account"]))
    if accounts.isna().any():
        raise AdvanceError(f"{int(accounts.isna().sum())} action(s) name an account the world does not have")
    if accounts.duplicated().any():
        raise AdvanceError(f"{int(accounts.duplicated().sum())} account(s) given more than one action")
    return pd.DataFrame({"account": accounts.astype(int).to_numpy(), "action": actions["action"].to_numpy()}
                        ).sort_values("account", ignore_index=True)


# --- the stream of events ------------------------------------------------------------------------------------


def write_events(path: Path, tables: list[dict[str, pd.DataFrame]], step: Step) -> int:
    """Write the events of the step's rows (per chunk, per table) to `path`, ordered by time; return how many."""
    merged = {t.id: pd.concat([c[t.id] for c in tables if t.id in c], ignore_index=True)
              for t in contract.TABLES if any(t.id in c for c in tables)}
    frames = [_events(table_id, column, rows, when, step) for table_id, df in merged.items()
              for column, rows, when in _stages(table_id, df, merged, step) if len(rows)]
    records = pd.concat(frames, ignore_index=True).sort_values(["at", "event_id"])["record"] if frames else []
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(record + "\n")
    return len(records)


def _stages(table_id: str, df: pd.DataFrame, tables: dict[str, pd.DataFrame], step: Step
            ) -> Iterator[tuple[str | None, pd.DataFrame, pd.Series]]:
    """The changes each row went through in the step: (the column the change's time fills, or None for a change of
    several columns; the row as it was after the change; the change's time)."""
    nat = pd.NaT
    if table_id == "support/tickets":
        new = df[df["opened_at"] >= START + pd.Timedelta(weeks=step.first)]
        closed = new["closed_at"].notna()
        opened = new.assign(closed_at=nat, satisfaction=pd.NA, status=new["status"].where(~closed, "open"))
        yield "opened_at", opened, opened["opened_at"]
        done = df[df["closed_at"].notna()]
        yield "closed_at", done, done["closed_at"]
    elif table_id == "marketing/sends":
        later = ["opened_at", "clicked_at", "responded_at"]
        yield "sent_at", df.assign(**dict.fromkeys(later, nat)), df["sent_at"]
        for i, column in enumerate(later):
            rows = df[df[column].notna()].assign(**dict.fromkeys(later[i + 1:], nat))
            yield column, rows, rows[column]
    elif table_id == "billing/subscriptions":
        ended = df[df["ended_at"].notna()]
        yield "ended_at", ended, ended["ended_at"]
        changed = df[df["ended_at"].isna()]
        last = tables["billing/plan_changes"].groupby("subscription_id")["changed_at"].max()
        yield None, changed, changed["subscription_id"].map(last)
    else:
        at = next(k.at for k in EVENT_KINDS if k.table == table_id and k.at)
        yield at, df, df[at]


def _events(table_id: str, column: str | None, rows: pd.DataFrame, when: pd.Series, step: Step) -> pd.DataFrame:
    """One event per row: its kind (the most specific whose fixed columns the row has), id and JSON text."""
    table = contract.table(table_id)
    kinds = _kinds(table_id, column, rows)
    text = rows.astype(object).where(rows.notna(), None)
    for c in table.columns:
        if c.kind == "datetime":
            text[c.name] = [None if pd.isna(v) else pd.Timestamp(v).isoformat() for v in rows[c.name]]
    at = pd.to_datetime(when).reset_index(drop=True)
    keys = rows[table.key].astype(str).to_numpy()
    # a product event is an event already: its own id is the event's, as folding the event into its row needs
    ids = list(keys) if table.key == "event_id" else [f"{label(step.first)}:{k}:{key}"
                                                      for k, key in zip(kinds, keys, strict=True)]
    records = []
    for event_id, kind, moment, row in zip(ids, kinds, at, text.to_dict("records"), strict=True):
        spec = contract.EVENTS_BY_KIND[kind]
        skip = {spec.at, *(name for name, _ in spec.fixed)}
        body = {c: _plain(row[c]) for c in table.column_names if c not in skip | {"event_id"}}
        records.append(json.dumps({"event_id": event_id, "kind": kind, "at": moment.isoformat(), **body}))
    return pd.DataFrame({"at": at, "event_id": ids, "record": records})


def _kinds(table_id: str, column: str | None, rows: pd.DataFrame) -> np.ndarray:
    """The kind of each row's change: of the kinds of its table whose time fills `column`, the one with the most
    fixed columns the row matches; failing those, the table's kind of change without a time column."""
    candidates = sorted((k for k in EVENT_KINDS if k.table == table_id and k.at == column),
                        key=lambda k: -len(k.fixed))
    kind = np.full(len(rows), None, dtype=object)
    for k in candidates:
        match = np.logical_and.reduce([rows[c].to_numpy() == v for c, v in k.fixed] + [kind == None])  # noqa: E711
        kind[match] = k.name
    fallback = next((k.name for k in EVENT_KINDS if k.table == table_id and k.at is None and k.update), None)
    if fallback is not None:
        kind[kind == None] = fallback  # noqa: E711
    if (kind == None).any():  # noqa: E711
        raise AdvanceError(f"a change of {table_id} ({column}) matches no event kind of the contract")
    return kind


def _plain(value: object) -> object:
    """A JSON value: numpy numbers as Python numbers."""
    return value.item() if isinstance(value, np.generic) else value

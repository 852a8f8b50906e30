"""`c360 generate`: six silos of a synthetic SaaS company, with the ground truth kept beside them.

Accounts are generated in chunks, each from its own seeded stream, so memory stays flat at any size and the
output depends only on (customers, seed, corrupt_rate, chunk_size). The marketing silo's consent log
(`synth.consent`) is drawn from a second stream per chunk, after the rest, and gets no injected faults: adding it
left every other file of a seed as it was (with `consent=False` it is not written at all). The consumers' age bands
(`people.age_bands`, the CRM contacts' `age_band` column, a sensitive attribute for fairness reviews) come from a
third stream the same way (`sensitive=False` leaves the column out).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from c360.core.contract import CONTENT_TOPICS, TABLES
from c360.features.synth import consent as consent_log
from c360.features.synth import faults, people, world
from c360.features.synth.silos import Builder, Ids, campaigns

CHUNK = 25_000
TRUTH = "ground_truth"
CSV_OPTIONS = pacsv.WriteOptions(quoting_style="needed")


@dataclass(frozen=True)
class GenerateReport:
    out: Path
    customers: int
    rows: dict[str, int]
    faults: int


class TextSink:
    """Appends text tables to CSV files and frames to Parquet files, opening each on first write."""

    def __init__(self) -> None:
        self.writers: dict[Path, pacsv.CSVWriter | pq.ParquetWriter] = {}
        self.rows: dict[Path, int] = {}

    def write(self, path: Path, df: pd.DataFrame) -> int:
        """Append; return the number of rows the file held before (the offset of these rows)."""
        table = pa.Table.from_pandas(df, preserve_index=False)
        if path.suffix == ".csv":  # all text; an all-null column would otherwise be typed null
            table = table.cast(pa.schema([(n, pa.string()) for n in table.column_names]))
        if path not in self.writers:
            path.parent.mkdir(parents=True, exist_ok=True)
            make = pacsv.CSVWriter if path.suffix == ".csv" else pq.ParquetWriter
            self.writers[path] = make(path, table.schema, **({"write_options": CSV_OPTIONS}
                                                            if path.suffix == ".csv" else {}))
            self.rows[path] = 0
        self.writers[path].write_table(table)
        offset = self.rows[path]
        self.rows[path] += len(df)
        return offset

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def generate(out: Path, customers: int, seed: int = 0, corrupt_rate: float = 0.0, chunk_size: int = CHUNK,
             on_chunk: Callable[[int], None] | None = None, consent: bool = True,
             sensitive: bool = True) -> GenerateReport:
    out.mkdir(parents=True, exist_ok=True)
    sink, ids = TextSink(), Ids()
    first_person = 0
    try:
        company_wide = {"marketing/campaigns": campaigns().drop(columns="week")}
        n_faults = write_silos(sink, out, np.random.default_rng([seed, 1 << 30]), company_wide, corrupt_rate)
        for k, first in enumerate(range(0, customers, chunk_size)):
            n = min(chunk_size, customers - first)
            rng = np.random.default_rng([seed, k])
            silos, truth, first_person, builder = _chunk(rng, first, n, first_person, ids)
            if sensitive:
                _age_bands(np.random.default_rng([seed, k, people.AGE_STREAM]), builder, silos.tables, truth)
            n_faults += write_silos(sink, out, rng, silos.tables, corrupt_rate)
            if consent:
                own = np.random.default_rng([seed, k, consent_log.STREAM])
                log, truth["consent"] = consent_log.consents(own, builder, ids)
                write_silos(sink, out, own, {"marketing/consents": log}, 0.0)
            for name, df in truth.items():
                sink.write(out / TRUTH / f"{name}.parquet", df)
            if on_chunk:
                on_chunk(n)
    finally:
        sink.close()
    rows = {str(p.relative_to(out)): r for p, r in sink.rows.items() if p.suffix == ".csv"}
    manifest = {"customers": customers, "seed": seed, "corrupt_rate": corrupt_rate, "chunk_size": chunk_size,
                "start": str(world.START.date()), "end": str(world.END.date()), "rows": rows}
    (out / TRUTH / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return GenerateReport(out, customers, rows, n_faults)


@dataclass(frozen=True)
class Replayed:
    """One chunk of a generated world rebuilt: its world, its builder (the keys of its accounts and people) and
    its consent log's truth (None when the world has no consents)."""

    k: int
    builder: Builder
    consent: pd.DataFrame | None


def replay(out: Path) -> Iterator[Replayed]:
    """The chunks of the world generated in `out`, rebuilt from its manifest: the same streams drawn in the same
    order give the same accounts, people and keys. Nothing is written."""
    manifest = json.loads((out / TRUTH / "manifest.json").read_text())
    customers, seed, chunk_size = manifest["customers"], manifest["seed"], manifest["chunk_size"]
    consent = (out / "marketing" / "consents.csv").is_file()
    ids, first_person = Ids(), 0
    for k, first in enumerate(range(0, customers, chunk_size)):
        rng = np.random.default_rng([seed, k])
        _, _, first_person, builder = _chunk(rng, first, min(chunk_size, customers - first), first_person, ids)
        log = None
        if consent:
            _, log = consent_log.consents(np.random.default_rng([seed, k, consent_log.STREAM]), builder, ids)
        yield Replayed(k, builder, log)


def _chunk(rng: np.random.Generator, first: int, n: int, first_person: int, ids: Ids):
    accounts = world.draw_accounts(rng, first, n)
    w = world.simulate(rng, accounts)
    firms = people.companies(rng, accounts, ids.taken)
    persons = people.contact_details(rng, people.people(rng, accounts, first_person), accounts, firms, ids.taken)
    builder = Builder(rng, w, persons, firms, ids)
    silos = builder.build()
    truth = {
        "records": pd.concat(silos.truth, ignore_index=True),
        "customers": _customer_truth(rng, w, builder, firms),
        "churn_risk": _churn_risk(w),
        "expansion": _expansion(w),
        "treatment_effects": _effects(w),
    }
    return silos, truth, first_person + len(persons), builder


def _age_bands(rng: np.random.Generator, builder: Builder, tables: dict[str, pd.DataFrame],
               truth: dict[str, pd.DataFrame]) -> None:
    """The CRM contacts' `age_band` column (last, so the other columns keep their place) and the truth's."""
    band = people.age_bands(rng, builder.p, builder.acc)
    by_key = pd.Series(band[builder.contact_rows], index=builder.contact_id)
    contacts = tables["crm/contacts"]  # the export's rows: those created by its end
    tables["crm/contacts"] = contacts.assign(age_band=contacts["contact_id"].map(by_key).to_numpy())
    admins = builder.p["rank"].to_numpy() == 0  # one per account, in account order; a consumer's only person
    truth["customers"] = truth["customers"].assign(age_band=band[admins])


def write_silos(sink: TextSink, out: Path, rng: np.random.Generator, tables: dict[str, pd.DataFrame],
                corrupt_rate: float, batch: str = "") -> int:
    """Write each table to `<out>/<silo>/<table><batch>.csv`, with faults at `corrupt_rate`; returns how many."""
    n = 0
    for table in TABLES:
        if table.id not in tables:
            continue
        df = tables[table.id]
        path = out / table.silo / f"{table.name}{batch}.csv"
        text, found = faults.inject(rng, table, df, corrupt_rate)
        offset = sink.write(path, text)
        if len(found):
            found = found.assign(table_id=table.id, file=f"{table.silo}/{table.name}.csv",
                                 row_number=found.pop("position") + offset + 1)
            sink.write(out / TRUTH / "faults.csv",
                       found[["table_id", "file", "row_number", "column", "kind", "value"]])
            n += len(found)
    return n


def _customer_truth(rng: np.random.Generator, w: world.World, builder: Builder, firms: pd.DataFrame
                    ) -> pd.DataFrame:
    acc = w.accounts
    future = slice(world.OBSERVED, world.HORIZON)
    seats = w.seats[:, future]
    addon_rate = world.addon_rate(w.health[:, future])
    addon_mean = world.addon_mean(seats)
    subscription = w.invoice_due[:, future] * w.mrr[:, future]
    alive, alive_at_end = w.alive[:, future], w.alive[:, world.OBSERVED - 1]
    survival = np.cumprod(1 - w.hazard[:, world.OBSERVED - 1: world.HORIZON - 1], axis=1)
    realized = (alive * subscription).sum(axis=1) + (rng.poisson(addon_rate * alive) * addon_mean).sum(axis=1)
    expected = alive_at_end * (survival * (subscription + addon_rate * addon_mean)).sum(axis=1)
    churn_date = pd.Series(world.START + pd.to_timedelta(w.churn_week * 7, unit="D"))
    churn_date = churn_date.where(w.churn_week < world.HORIZON)
    truth = pd.DataFrame({
        "account": acc["account"], "account_id": builder.account_id, "billing_account_id": builder.billing_id,
        "company": firms["company"], "segment": acc["segment"], "region": acc["region"],
        "start_week": acc["start_week"], "churn_week": w.churn_week, "churn_date": churn_date,
        "alive_at_end": alive_at_end,
        "future_value_12m": realized.round(2), "expected_value_12m": expected.round(2),
    })
    for trait in ("base_health", "trend", "adoption", "price_sensitivity", "support_load", "fail_rate"):
        truth[trait] = acc[trait].to_numpy()
    for i, topic in enumerate(CONTENT_TOPICS):
        truth[f"interest_{topic}"] = builder.interest[:, i]
    return truth


def _churn_risk(w: world.World) -> pd.DataFrame:
    risk = world.churn_risk_90d(w, np.arange(0, world.OBSERVED + 1, world.BILLING_PERIOD))
    risk["as_of"] = world.START + pd.to_timedelta(risk.pop("week") * 7, unit="D")
    return risk


def _expansion(w: world.World) -> pd.DataFrame:
    """Every 4 weeks and at each experiment wave (the dates of the feature snapshots). It draws nothing: the
    generator's other outputs, and so every seed's figures, stay as they were."""
    weeks = np.union1d(np.arange(0, world.OBSERVED + 1, world.BILLING_PERIOD), world.WAVES)
    chance = world.expansion_90d(w, weeks)
    chance["as_of"] = world.START + pd.to_timedelta(chance.pop("week") * 7, unit="D")
    return chance


def _effects(w: world.World) -> pd.DataFrame:
    eff = w.effects.merge(w.assignments, on=["account", "wave", "action"], how="left", indicator="assigned")
    eff["assigned"] = eff["assigned"] == "both"
    eff["as_of"] = world.START + pd.to_timedelta(eff["wave"] * 7, unit="D")
    return eff

"""Batch scoring (`c360 score`): every customer × every champion, with reasons, into Parquet and the online store.

One run scores the latest feature snapshot with the versions that are `@champion` when it starts. It writes, under
`C360_HOME/scores/as_of=<snapshot date>/run=churn-v<a>.clv-v<b>.nba-v<c>[.expansion-v<d>][.response-v<e>]
[.subset-<hash>][.optouts-<hash>]/` (expansion and response when they have a champion):

* `part-<n>.parquet` — long format, one row per customer and model: customer_id, model, version, score, label
  (churn band, action or best campaign channel), reasons (JSON list of feature, value, contribution), detail (JSON:
  CLV range, NBA alternatives, the best channel's topic), as_of, scored_at;
* `wide/part-<n>.parquet` — one row per customer, the `predictions` feature view's columns (its offline source)
  and, once `c360 personas fit` has run, the customer's `persona` (`c360.features.personas`; audiences filter on
  it, the online store does not keep it: the profile derives it from the features it shows);
* `_run.json` (started, scored_at, chunk size) and, when every chunk is done, `_SUCCESS.json` (rows, seconds).

Chunks of `chunk_size` customers are written atomically (temporary file, then rename) and pushed into the online
store right after. Re-running the same run resumes: chunks already on disk are not scored again, only pushed again
(an idempotent upsert) — after a crash, the next run picks up where it stopped; after success, nothing changes.
From `PROCESS_ROWS` customers to score, the chunks are scored by one worker process per core, each on one
LightGBM thread, and pushed here as they come: LightGBM's threads keep both cores busy during its calls only, and
a chunk's own work around them (the model matrices, the reasons, the Parquet) ran on one core while the other
waited. A worker reads the snapshot itself, as a Spark task does (`run_rows`). The workers are forked from a
server that imports this module while the run is being loaded here (`_warm_workers`): a spawned worker spent
seconds importing c360 before its first chunk.

A new snapshot, a new champion or new personas is a new run folder, and so is a new opt-out recorded by
`c360 privacy opt-out`: the run applies the recorded opt-outs to the snapshot's consent features, so the next best
action it stores never proposes an action the customer opted out of (`c360.core.consent`).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import multiprocessing.forkserver
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from c360.core import consent
from c360.core.settings import Settings
from c360.feature_repo.predictions import FIELDS, PREDICTIONS
from c360.features import personas, store
from c360.serving import predict, signals
from c360.serving.champions import Champion, Champions
from c360.serving.errors import Unavailable

CHUNK = 100_000
# From this many customers to score, worker processes score the chunks: below it, starting them (each imports c360
# and reads the snapshot, seconds of CPU) costs more than the core they free.
PROCESS_ROWS = 200_000


@dataclass(frozen=True)
class ScoreReport:
    folder: Path
    as_of: pd.Timestamp
    versions: dict[str, int]
    customers: int
    chunks: int
    scored_chunks: int  # chunks computed by this run (the rest were on disk already)
    seconds: float
    engine: str = "duckdb"  # what scored the chunks: this process, or Spark's tasks
    processes: int = 1  # the processes that scored the chunks on the DuckDB engine

    @property
    def per_second(self) -> float:
        return self.customers / self.seconds if self.seconds else float("nan")


def score_chunk(champions: Sequence[Champion], X: pd.DataFrame, k: int = predict.K) -> list[predict.ModelScores]:
    """Every champion's scores with top-k reasons for a frame of customers' raw features (`Champions.loaded()`: an
    optional model without a champion has none)."""
    return [champion.score(X, k) for champion in champions]


def wide_table(customers: pd.Series, scores: list[predict.ModelScores], signal_frame: pd.DataFrame,
               as_of: pd.Timestamp | pd.Series, scored_at: pd.Timestamp, source: str = "batch") -> pa.Table:
    """The `predictions` view's rows: customer_id, as_of (one for all, or each row's), scored_ts and every field
    of FIELDS (`source`: who scored, `c360 score` or the live update); a model not scored leaves its fields empty."""
    n = len(customers)
    as_ofs = as_of.to_numpy() if isinstance(as_of, pd.Series) else np.full(n, as_of.to_datetime64())
    columns: dict[str, Any] = {"customer_id": pa.array(customers.to_numpy(dtype=object), type=pa.string()),
                               "as_of": pa.array(as_ofs, type=pa.timestamp("us")),
                               "scored_ts": pa.array(np.full(n, scored_at.to_datetime64()), type=pa.timestamp("us")),
                               "scored_at": pa.array(np.full(n, scored_at.isoformat()), type=pa.string()),
                               "source": pa.array(np.full(n, source), type=pa.string())}
    for s in scores:
        columns |= predict.wide(s)
    for name in ("next_feature", "next_feature_score", "next_feature_method", "content_topics"):
        columns[name] = signal_frame[name].to_numpy()
    return pa.table({name: _typed(columns.get(name, np.full(n, None)), FIELDS[name][0]) if name in FIELDS
                     else columns[name] for name in ["customer_id", "as_of", "scored_ts", *FIELDS]})


def _typed(values: Any, dtype: Any) -> pa.Array:
    from feast.types import Float64, Int64

    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    arrow = pa.int64() if dtype == Int64 else pa.float64() if dtype == Float64 else pa.string()
    return pa.array(values, type=arrow, from_pandas=True)


def long_table(customers: pd.Series, scores: list[predict.ModelScores], as_of: pd.Timestamp,
               scored_at: pd.Timestamp) -> pa.Table:
    """One row per customer and model: customer_id, model, version, score, label, reasons, detail, as_of,
    scored_at."""
    n = len(customers)
    parts = []
    for s in scores:
        detail = s.detail if s.detail is not None else pa.array(np.full(n, "{}"), type=pa.string())
        parts.append(pa.table({
            "customer_id": pa.array(customers.to_numpy(dtype=object), type=pa.string()),
            "model": pa.array(np.full(n, s.model), type=pa.string()),
            "version": pa.array(np.full(n, s.version), type=pa.int64()),
            "score": pa.array(s.score, type=pa.float64()),
            "label": pa.array(s.label if s.label is not None else np.full(n, None), type=pa.string()),
            "reasons": s.reasons.json(),
            "detail": detail,
            "as_of": pa.array(np.full(n, as_of.to_datetime64()), type=pa.timestamp("us")),
            "scored_at": pa.array(np.full(n, scored_at.to_datetime64()), type=pa.timestamp("us")),
        }))
    return pa.concat_tables(parts)


def _atomic_write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def run_folder(s: Settings, as_of: pd.Timestamp, versions: dict[str, int], subset: list[str] | None,
               opt_outs: consent.Overrides | None = None, persona_model: personas.Model | None = None) -> Path:
    name = ".".join(f"{kind}-v{v}" for kind, v in versions.items())
    if persona_model is not None:
        name += ".personas-" + persona_model.digest
    if subset is not None:
        name += ".subset-" + _digest(sorted(subset))
    if opt_outs:
        name += ".optouts-" + _digest(sorted(f"{c}:{p}" for c, purposes in opt_outs.items() for p in purposes))
    return s.scores / f"as_of={as_of:%Y-%m-%d}" / f"run={name}"


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:10]


def read_customers(path: Path) -> list[str]:
    """Customer ids from a file: one per line, or a CSV / Parquet with a `customer_id` column."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path, columns=["customer_id"])["customer_id"].astype(str).tolist()
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if lines and lines[0].split(",")[0].strip() == "customer_id":
        return pd.read_csv(path, usecols=["customer_id"], dtype=str)["customer_id"].tolist()
    return lines


def _reusable(long_path: Path, wide_path: Path, columns: set[str]) -> bool:
    """A part an earlier run of the same champions wrote, with every column of today's (a part written by an older
    c360 is scored again rather than pushed short of a field)."""
    return long_path.exists() and wide_path.exists() and columns <= set(pq.read_schema(wide_path).names)


def with_persona(table: pa.Table, persona_model: personas.Model | None, X: pd.DataFrame) -> pa.Table:
    """The wide rows with each customer's persona, when personas are fitted."""
    if persona_model is None:
        return table
    return table.append_column("persona", pa.array(personas.assign(persona_model, X), type=pa.string()))


def push(s: Settings, fs: Any, table: pa.Table) -> None:
    """Upsert wide score rows into the `predictions` view of the online store."""
    view = fs.get_feature_view(PREDICTIONS)
    store.write_online(fs, [(view, table.drop_columns([c for c in table.column_names if c == "persona"]))])


def _predictions_view(s: Settings) -> Any:
    fs = store.feature_store(s)
    try:
        fs.get_feature_view(PREDICTIONS)
    except Exception:  # not registered yet: register every definition (idempotent)
        fs = store.apply(s)
    return fs


def _warehouse_inputs(con: Any, as_of: pd.Timestamp) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """What a run reads from the warehouse: the recorded opt-outs, product usage and campaign engagement."""
    return consent.overrides(con), signals.usage(con, as_of), signals.topics(con, as_of)


@dataclass(frozen=True)
class Run:
    """Everything scoring a chunk of a run needs, and nothing that cannot be shipped: a Spark task receives it
    whole (pickled) and scores its chunks with the very code `c360 score` runs in-process."""

    home: Path
    as_of: pd.Timestamp
    customers: tuple[str, ...] | None
    opt_outs: consent.Overrides
    champions: tuple[Champion, ...]
    used: pd.DataFrame
    engagement: pd.DataFrame
    persona_model: personas.Model | None
    folder: Path
    scored_at: pd.Timestamp
    chunk_size: int

    @property
    def columns(self) -> set[str]:
        return set(FIELDS) | ({"persona"} if self.persona_model is not None else set())

    def paths(self, i: int) -> tuple[Path, Path]:
        """The long and wide part files of chunk `i`."""
        return self.folder / f"part-{i:05d}.parquet", self.folder / "wide" / f"part-{i:05d}.parquet"

    def pending(self, chunks: int) -> list[int]:
        return [i for i in range(chunks) if not _reusable(*self.paths(i), self.columns)]

    def compute(self, rows: pd.DataFrame, i: int) -> pa.Table:
        """Score chunk `i` of `rows` (the run's rows, `scored_rows`), write its long and wide parts; the wide rows."""
        part = rows.iloc[i * self.chunk_size:(i + 1) * self.chunk_size]
        ids = part["customer_id"].reset_index(drop=True)
        X = part.reset_index(drop=True)
        scores = score_chunk(self.champions, X)
        signal_frame = signals.batch_signals(self.used, self.engagement, pd.Index(ids)).reset_index(drop=True)
        table = with_persona(wide_table(ids, scores, signal_frame, self.as_of, self.scored_at), self.persona_model, X)
        long_path, wide_path = self.paths(i)
        _atomic_write(long_table(ids, scores, self.as_of, self.scored_at), long_path)
        _atomic_write(table, wide_path)
        return table


_rows_of: dict[Path, pd.DataFrame] = {}  # a worker's rows of its run, read once per process


def run_rows(run: Run) -> pd.DataFrame:
    """The rows of `run` (`scored_rows`), read by a worker process or a Spark task from the run's home, once."""
    if run.folder not in _rows_of:
        _rows_of.clear()
        snapshot = store.read_snapshot(Settings(home=run.home), run.as_of)
        _rows_of[run.folder] = scored_rows(snapshot, run.customers, run.opt_outs)
    return _rows_of[run.folder]


_worker_run: list[Run] = []  # the run a worker process scores chunks of (`_start_worker`)


def _start_worker(run: Run) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # one LightGBM thread each: the processes share the cores
    _worker_run[:] = [run]


def _compute_chunk(i: int) -> None:
    run = _worker_run[0]
    run.compute(run_rows(run), i)


def workers(rows: int, processes: int | None) -> int:
    """The worker processes scoring `rows` rows on the DuckDB engine: `processes` when given, else one per core from
    `PROCESS_ROWS` rows; 1 scores in this process."""
    if processes is not None:
        return processes
    return predict.cores() if rows >= PROCESS_ROWS else 1


_WORKERS = multiprocessing.get_context("forkserver")


def _warm_workers() -> None:
    """Start the server worker processes fork from, importing this module (c360, LightGBM, Feast: seconds of CPU)
    on another core while the run loads; the workers it forks start with their imports done."""
    _WORKERS.set_forkserver_preload([__name__])
    multiprocessing.forkserver.ensure_running()


def _parts(run: Run, rows: pd.DataFrame, chunks: int, pending: list[int], processes: int) -> Iterator[pa.Table]:
    """Each chunk's wide rows in order: scored in this process or by `processes` workers when pending, read back
    from its part otherwise."""
    if processes <= 1:
        for i in range(chunks):
            yield run.compute(rows, i) if i in pending else pq.read_table(run.paths(i)[1])
        return
    pool = ProcessPoolExecutor(processes, mp_context=_WORKERS, initializer=_start_worker, initargs=(run,))
    try:
        futures = {i: pool.submit(_compute_chunk, i) for i in pending}
        for i in range(chunks):
            if i in futures:
                futures[i].result()
            yield pq.read_table(run.paths(i)[1])
    except BrokenProcessPool as e:
        raise Unavailable("scoring worker", "a worker process ended abruptly (killed, or out of memory?); the chunks "
                          "written are kept: run again to resume, with fewer --processes or a smaller --chunk-size",
                          e) from e
    finally:
        pool.shutdown(cancel_futures=True)


def scored_rows(snapshot: pd.DataFrame, customers: Sequence[str] | None, opt_outs: consent.Overrides) -> pd.DataFrame:
    """The snapshot rows a run scores, in order: every customer of the snapshot, or `customers` (each once, all of
    them in it), with the recorded opt-outs applied to the consent features."""
    if customers is not None:
        wanted = pd.Index(pd.unique(pd.Series(list(customers), dtype=object)))
        known = wanted.isin(snapshot["customer_id"])
        if not known.all():
            missing = wanted[~known]
            as_of = pd.Timestamp(snapshot["as_of"].max())
            raise LookupError(f"{len(missing):,} customers not in the snapshot of {as_of:%Y-%m-%d}, e.g. "
                              + ", ".join(missing[:5]))
        snapshot = pd.DataFrame({"customer_id": wanted}).merge(snapshot, on="customer_id", validate="one_to_one")
    return consent.apply_overrides(snapshot, opt_outs)


def _length(rows: int, chunk_size: int, i: int) -> int:
    """The rows of chunk `i`."""
    return max(0, min(chunk_size, rows - i * chunk_size))


def _start(s: Settings, as_of: pd.Timestamp, folder: Path, versions: dict[str, int], chunk_size: int
           ) -> tuple[pd.Timestamp, int]:
    """The run's scoring time and chunk size: a new run's, or those of the run being resumed (`_run.json`)."""
    manifest = folder / "_run.json"
    if not manifest.exists():
        scored_at = pd.Timestamp.now(tz="UTC").tz_convert(None).floor("s")
        folder.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps({"scored_at": scored_at.isoformat(), "as_of": f"{as_of:%Y-%m-%d}",
                                        "versions": versions, "chunk_size": chunk_size}))
    recorded = json.loads(manifest.read_text())
    return pd.Timestamp(recorded["scored_at"]), int(recorded.get("chunk_size", chunk_size))


def score(s: Settings, customers: list[str] | None = None, chunk_size: int = CHUNK,
          on_start: Callable[[int], None] | None = None, on_chunk: Callable[[int], None] | None = None,
          warehouse_con: Any = None, processes: int | None = None) -> ScoreReport:
    """Score the latest snapshot's customers (or `customers`) with every champion; see the module docstring. On
    the Spark engine (`C360_ENGINE=spark`) Spark tasks score the chunks not on disk yet; the pushes follow here. On
    DuckDB's, `processes` worker processes score them (`workers`: by default one per core from `PROCESS_ROWS`)."""
    from c360.serving.online import warehouse

    started = time.perf_counter()
    as_of = store.latest_snapshot_date(s)
    spark = s.engine == "spark"
    if not spark and workers(store.snapshot_rows(s, as_of) if customers is None else len(customers), processes) > 1:
        _warm_workers()
    if warehouse_con is not None:
        opt_outs, used, engagement = _warehouse_inputs(warehouse_con, as_of)
    else:
        with warehouse(s) as con:
            opt_outs, used, engagement = _warehouse_inputs(con, as_of)
    snapshot = store.read_snapshot(s, as_of)
    rows = scored_rows(snapshot, customers, opt_outs)
    champions = Champions.load(s.home, snapshot)
    persona_model = personas.load(s)
    folder = run_folder(s, as_of, champions.versions(), customers, opt_outs, persona_model)
    scored_at, chunk_size = _start(s, as_of, folder, champions.versions(), chunk_size)
    run = Run(s.home, as_of, None if customers is None else tuple(customers), opt_outs, champions.loaded(), used,
              engagement, persona_model, folder, scored_at, chunk_size)
    fs = _predictions_view(s)
    chunks = max(1, -(-len(rows) // chunk_size))
    if on_start:
        on_start(len(rows))
    pending = run.pending(chunks)
    if spark and pending:
        from c360.serving.spark_scoring import compute

        compute(run, pending)
    here = [] if spark else pending  # the chunks this engine scores below
    procs = min(workers(sum(_length(len(rows), chunk_size, i) for i in here), processes), len(here)) if here else 1
    for i, table in enumerate(_parts(run, rows, chunks, here, procs)):
        push(s, fs, table)
        if on_chunk:
            on_chunk(_length(len(rows), chunk_size, i))
    seconds = time.perf_counter() - started
    (folder / "_SUCCESS.json").write_text(json.dumps({"rows": len(rows), "chunks": chunks, "seconds": round(seconds, 1),
                                                      "engine": s.engine, "processes": procs}))
    return ScoreReport(folder, as_of, champions.versions(), len(rows), chunks, len(pending), seconds, s.engine,
                       procs)

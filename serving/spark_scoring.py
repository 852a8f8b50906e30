"""Batch scoring on Spark (`C360_ENGINE=spark`): the chunks of a run scored by Spark tasks, per partition.

The driver ships the run (`batch.Run`: the champions, the warehouse's signals and opt-outs, the run folder) to every
task once, as a broadcast. Each task reads the snapshot from `C360_HOME` (on a cluster, a folder every machine
mounts), takes its chunks of the run's rows and writes their long and wide parts with `Run.compute`, the code the
DuckDB engine runs in-process: the same rows in the same chunks, so the same files, scores and reasons. The driver
then pushes the wide parts into the online store as a resumed run does (`batch.score`).

LightGBM in a task uses the cores Spark gives it (`spark.task.cpus`, which PySpark passes on as
`OMP_NUM_THREADS`), not every core of the machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pandas as pd

from c360.core import engine

if TYPE_CHECKING:
    from c360.serving.batch import Run


def compute(run: Run, chunks: list[int]) -> None:
    """Score `chunks` of `run`, one Spark task each."""
    spark = engine.spark()
    shipped = spark.sparkContext.broadcast(run)

    def score_chunks(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from c360.serving.batch import run_rows

        task_run = shipped.value
        rows = run_rows(task_run)
        for batch in batches:
            for i in batch["chunk"]:
                task_run.compute(rows, int(i))
            yield batch

    ids = spark.createDataFrame(pd.DataFrame({"chunk": chunks})).repartition(len(chunks))
    ids.mapInPandas(score_chunks, "chunk long").collect()
    shipped.unpersist()


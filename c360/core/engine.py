"""The engine of the heavy stages: DuckDB in this process, or Apache Spark (`C360_ENGINE=spark`).

Spark is optional: pyspark is the `spark` extra and needs Java. `spark_unavailable` says why it cannot run, so a
command fails with that reason and a test skips with it. A JVM out of memory exits (`spark_conf`) rather than hang
the command that waits for it; `spark_ended` words that end, or a JVM killed, in one line.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from functools import cache
from typing import TYPE_CHECKING

from c360.core.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class EngineUnavailable(RuntimeError):
    """The engine the settings name cannot run here (the reason in words)."""


def name() -> str:
    """The engine the settings name: "duckdb" or "spark"."""
    return Settings().engine


def spark_unavailable() -> str | None:
    """Why Spark cannot run here, or None when it can."""
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (the `spark` extra: uv sync --extra spark)"
    if shutil.which("java") is None:
        return "Java is not installed (Debian: apt-get install default-jre-headless)"
    return None


def unavailable(s: Settings) -> str | None:
    """Why the engine `s` names cannot run here (in words a command can print), or None when it can."""
    reason = spark_unavailable() if s.engine == "spark" else None
    return f"C360_ENGINE=spark: {reason}" if reason else None


def spark_conf(s: Settings) -> dict[str, str]:
    """c360's Spark settings: its session's, and those Feast's Spark offline store starts a session with when Feast's
    own tools (`feast -c`) read feature_store.yaml. UTC, so timestamps mean what they mean in DuckDB; with
    C360_ENCRYPTION_KEY set, what Spark writes to local disk (shuffles, spills, cached blocks) is encrypted."""
    return {"spark.master": s.spark_master,
            "spark.app.name": "c360",
            "spark.driver.memory": s.spark_driver_memory,  # read once, as the JVM starts
            # A thread that runs out of heap dies alone, and the Python side then waits for its answer forever
            # (seen at 1M training examples on 8g): end the JVM instead, which Python sees at once.
            "spark.driver.extraJavaOptions": "-XX:+ExitOnOutOfMemoryError",
            "spark.io.encryption.enabled": str(s.encryption_key is not None).lower(),
            "spark.sql.session.timeZone": "UTC",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": "8",
            "spark.sql.execution.arrow.pyspark.enabled": "true"}


def spark_ended(error: BaseException) -> str | None:
    """One line for an error that says the Spark JVM is gone (out of memory, or killed), else None: py4j's own
    error, or one raised while handling it (py4j reconnects to the dead JVM, and that connection is refused)."""
    cause: BaseException | None = error
    while cause is not None and not type(cause).__module__.startswith("py4j"):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    memory = Settings().spark_driver_memory
    return (f"spark unavailable: its JVM ended (out of memory? C360_SPARK_DRIVER_MEMORY is {memory}, in local mode "
            f"all of Spark's memory): {str(error).splitlines()[0] if str(error) else type(error).__name__}")


@cache
def spark(master: str | None = None) -> SparkSession:
    """One Spark session per process, on `master` (default: the settings' `spark_master`), with `spark_conf` (its
    driver's heap the settings' `spark_driver_memory`). Its Python functions run in this Python (PYSPARK_PYTHON
    names another)."""
    if reason := unavailable(Settings(engine="spark")):
        raise EngineUnavailable(reason)
    from pyspark.sql import SparkSession

    conf = spark_conf(Settings())
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # read by the context as it starts, not from its conf
    session = SparkSession.builder.config(map={**conf, "spark.master": master or conf["spark.master"]}).getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session

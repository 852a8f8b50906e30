"""The engine: a Spark JVM that ends (out of memory, or killed) is one line for the command that waited for it,
not a hang or a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from c360.core import engine

UNAVAILABLE = engine.spark_unavailable()
ENDED = """
import os, signal
from c360.core import engine

session = engine.spark("local[1]")
jvm = session.sparkContext._jvm
print("exits when out of memory:",
      "-XX:+ExitOnOutOfMemoryError" in list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
                                               .getInputArguments()))
os.kill(jvm.java.lang.ProcessHandle.current().pid(), signal.SIGKILL)
try:
    session.range(3).count()
except Exception as e:
    print(engine.spark_ended(e))
"""


@pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))
def test_a_spark_jvm_that_ends_is_one_line() -> None:
    lines = subprocess.run([sys.executable, "-c", ENDED], capture_output=True, text=True, timeout=300,
                           check=True).stdout.splitlines()
    assert lines[0] == "exits when out of memory: True"
    assert lines[-1].startswith("spark unavailable: its JVM ended (out of memory? C360_SPARK_DRIVER_MEMORY is ")


def test_other_errors_are_not_spark_s() -> None:
    assert engine.spark_ended(ValueError("not a JVM")) is None

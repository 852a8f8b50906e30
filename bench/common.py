"""What every benchmark shares: timing a command in a child process, and writing its rows to RESULTS.md."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_mb: float


def run(args: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run a command in a child process; its wall time and peak resident memory (GNU time)."""
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"benchmark step failed: {' '.join(args)}")
    peak_kb = int(proc.stderr.strip().splitlines()[-1])
    return Measured(seconds, peak_kb / 1024)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB, Python {platform.python_version()}"


def record(section: str, body: str) -> None:
    """Replace (or add) one `## section` of RESULTS.md, stamped with the date and machine."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nLatest run of each benchmark.\n"
    block = f"## {section}\n\n{time.strftime('%Y-%m-%d')}, {machine()}.\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    RESULTS.write_text(text)

"""The service as a process: the `bentoml serve` command line for a C360_HOME, starting it, waiting for
`/readyz`, stopping it with its workers. Used by `c360 serve`, the benchmarks and the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from c360.core.settings import Settings
from c360.serving.auth import loopback


def serve_command(port: int, host: str = "127.0.0.1", workers: int = 1,
                  s: Settings | None = None) -> tuple[list[str], dict[str, str]]:
    """The `bentoml serve` command line and environment of the service for `s` (default: the current settings).
    ValueError for `C360_AUTH=off` on an address beyond loopback: keyless service is for this machine only."""
    s = s or Settings()
    if s.auth == "off" and not loopback(host):
        raise ValueError(f"C360_AUTH=off serves this machine only: bind 127.0.0.1, not {host}, or turn keys on")
    env = {**os.environ, "C360_HOME": str(s.home.resolve()), "C360_SERVE_WORKERS": str(workers),
           "BENTOML_HOME": os.environ.get("BENTOML_HOME", str((s.home / "bentoml").resolve())),
           "BENTOML_DO_NOT_TRACK": "True"}
    return [sys.executable, "-m", "bentoml", "serve", "c360.serving.service:C360", "--port", str(port), "--host", host,
            "--working-dir", str(Path(__file__).resolve().parents[1])], env


def start(command: list[str], env: dict[str, str], out: IO | int | None = subprocess.DEVNULL) -> subprocess.Popen:
    """Start a server in its own process group (so `stop` reaches its worker processes too); `out=None`: this
    process's stdout."""
    return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(url: str, process: subprocess.Popen, seconds: float = 180) -> None:
    """Until `url` answers 200; RuntimeError when the process exits or the time is up."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {seconds:.0f} s")


def stop(process: subprocess.Popen, seconds: float = 30) -> None:
    """SIGTERM to the server's process group, SIGKILL after `seconds`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

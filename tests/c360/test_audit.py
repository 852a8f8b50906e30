"""The audit trail (`c360.core.audit`): a chain that concurrent writers keep whole, and that tells an edit."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import audit
from c360.core.settings import Settings

runner = CliRunner()


def _append_many(home: str, writer: int, n: int) -> None:
    s = Settings(home=Path(home))
    for i in range(n):
        audit.append(s, key=f"k{writer}", role="csm", action="GET /customers/{customer_id}/profile",
                     customers=[f"C{i:08d}"], status=200)


def test_concurrent_writers_keep_one_chain(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    workers = [multiprocessing.get_context("spawn").Process(target=_append_many, args=(str(tmp_path), w, 150))
               for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    verdict = audit.verify(s)
    assert verdict.ok, verdict.problem
    assert verdict.records == 4 * 150
    assert [r["seq"] for r in audit.records(s)] == list(range(1, 601))
    assert len(audit.records(s, key="k2")) == 150
    assert len(audit.records(s, customer="C00000007")) == 4


def _lines(s: Settings) -> list[str]:
    return audit.path(s).read_text().splitlines()


def _rewrite(s: Settings, lines: list[str]) -> None:
    audit.path(s).write_text("".join(line + "\n" for line in lines))


@pytest.fixture
def trail(tmp_path: Path) -> Settings:
    s = Settings(home=tmp_path)
    _append_many(str(tmp_path), 0, 5)
    return s


def test_an_edited_record_breaks_the_chain(trail: Settings) -> None:
    lines = _lines(trail)
    record = json.loads(lines[2])
    record["key"] = "someone-else"
    _rewrite(trail, [*lines[:2], json.dumps(record), *lines[3:]])
    verdict = audit.verify(trail)
    assert not verdict.ok and "line 3" in str(verdict.problem) and verdict.records == 2


def test_a_removed_record_breaks_the_chain(trail: Settings) -> None:
    lines = _lines(trail)
    _rewrite(trail, [*lines[:1], *lines[2:]])
    assert not audit.verify(trail).ok
    _rewrite(trail, lines[1:])  # the first one too: the chain starts at the genesis
    assert not audit.verify(trail).ok


def test_purge_keeps_the_rest_verifiable(trail: Settings) -> None:
    cut = datetime.fromisoformat(json.loads(_lines(trail)[3])["at"])
    older = sum(datetime.fromisoformat(json.loads(line)["at"]) < cut for line in _lines(trail))
    assert audit.purge(trail, cut) == older
    assert all(datetime.fromisoformat(json.loads(line)["at"]) >= cut for line in _lines(trail))
    assert audit.verify(trail).ok
    audit.append(trail, key="k9", role="admin", action="c360 profile", customers=["C1"], status="ok")
    assert audit.verify(trail).ok
    _rewrite(trail, _lines(trail)[1:])  # a deletion after the purge is still told from it
    assert not audit.verify(trail).ok
    assert audit.purge(trail, datetime.now(UTC) + timedelta(days=1)) >= 1 and audit.verify(trail).ok


def test_audit_commands(trail: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("C360_HOME", str(trail.home))
    listed = runner.invoke(app, ["audit", "--customer", "C00000003", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["customers"] for r in json.loads(listed.stdout)["records"]] == [["C00000003"]]
    ok = runner.invoke(app, ["audit", "verify", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout) == {"ok": True, "records": 5}
    lines = _lines(trail)
    _rewrite(trail, [lines[0].replace("C00000000", "C00000009"), *lines[1:]])
    broken = runner.invoke(app, ["audit", "verify", "--json"])
    assert broken.exit_code == 1 and "line 1" in json.loads(broken.stdout)["error"]

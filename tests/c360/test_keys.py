"""The API key store (`core.keys`) and `c360 keys`: keys shown once and stored as hashes, owner-only files, the
service's reader seeing every change, and one-line errors."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import keys
from c360.core.settings import Settings

runner = CliRunner()


def test_a_key_is_stored_as_its_hash_in_owner_only_files(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    token = keys.create(s, "crm-sync", "service")
    assert token.startswith(keys.PREFIX) and len(token) > 40
    text = s.keys.read_text()
    assert token not in text and token[len(keys.PREFIX):] not in text and keys.digest(token) in text
    assert stat.S_IMODE(s.keys.stat().st_mode) == 0o600 and stat.S_IMODE(s.keys.parent.stat().st_mode) == 0o700
    assert [(k.name, k.role) for k in keys.listed(s)] == [("crm-sync", "service")]


def test_the_reader_sees_creation_revocation_and_expiry(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    reader = keys.Keys(s)
    with pytest.raises(keys.KeyProblem, match="unknown API key"):
        reader.check("c360_nothing")
    token = keys.create(s, "a", "csm")
    assert reader.check(token).role == "csm"
    keys.revoke(s, "a")
    with pytest.raises(keys.KeyProblem, match="'a' was revoked") as refused:
        reader.check(token)
    assert refused.value.name == "a"
    soon = keys.create(s, "b", "analyst", datetime.now(UTC) + timedelta(seconds=1))
    assert reader.check(soon).name == "b"
    data = json.loads(s.keys.read_text())  # as if the second had passed: the expiry is read from the file
    data["keys"][-1]["expires"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    s.keys.write_text(json.dumps(data))
    os.utime(s.keys, ns=(0, 1))
    with pytest.raises(keys.KeyProblem, match="'b' expired"):
        reader.check(soon)


def test_names_roles_and_expiries_are_checked(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    first = keys.create(s, "a", "admin")
    with pytest.raises(keys.KeyProblem, match="an active key is already named 'a'"):
        keys.create(s, "a", "csm")
    with pytest.raises(keys.KeyProblem, match="unknown role 'root'"):
        keys.create(s, "c", "root")
    with pytest.raises(keys.KeyProblem, match="invalid key name"):
        keys.create(s, "a b", "csm")
    with pytest.raises(keys.KeyProblem, match="in the past"):
        keys.create(s, "c", "csm", datetime(2020, 1, 1))
    with pytest.raises(keys.KeyProblem, match="no active key named 'zzz'"):
        keys.revoke(s, "zzz")
    second = keys.create(s, "a", "csm", replace_active=True)  # what `c360 demo` does on a re-run
    reader = keys.Keys(s)
    assert reader.check(second).role == "csm"
    with pytest.raises(keys.KeyProblem, match="revoked"):
        reader.check(first)


def test_keys_commands(home: Path) -> None:
    created = runner.invoke(app, ["keys", "create", "ops", "--role", "admin", "--expires", "2999-01-01", "--json"])
    assert created.exit_code == 0, created.output
    shown = json.loads(created.stdout)
    assert shown["name"] == "ops" and shown["role"] == "admin" and shown["key"].startswith(keys.PREFIX)
    again = runner.invoke(app, ["keys", "create", "ops", "--role", "csm"])
    assert again.exit_code == 1 and again.stderr.strip().count("\n") == 0 and "already named 'ops'" in again.stderr
    bad_date = runner.invoke(app, ["keys", "create", "x", "--role", "csm", "--expires", "soon"])
    assert bad_date.exit_code == 1 and "is not a date" in bad_date.stderr
    listed = json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout)["keys"]
    assert [(k["name"], k["role"], k["expires"][:10]) for k in listed] == [("ops", "admin", "2999-01-01")]
    assert shown["key"] not in runner.invoke(app, ["keys", "list"]).stdout and "sha256" not in listed[0]
    revoked = runner.invoke(app, ["keys", "revoke", "ops", "--json"])
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["revoked"]
    assert runner.invoke(app, ["keys", "revoke", "ops"]).exit_code == 1

"""API keys of the service: random tokens, of which only the SHA-256 is kept, each with a name and a role.

The store is one JSON file, `C360_HOME/security/keys.json` (owner-only, folder too), rewritten whole and atomically
by `create` and `revoke` under a lock, so two commands never lose each other's key. A key is shown once, when it
is created; a lost key is revoked and replaced. SHA-256 suffices for random 256-bit tokens (a slow password hash
guards guessable secrets, and would cost every request).

The service reads the store through `Keys`, which re-reads the file when its stat (inode, size, mtime) changes: one
`stat` per request, so a key created or revoked by `c360 keys` counts on a running server at its next request.

Roles (what each may do is the service's route table, `serving.access`):

* `admin`: everything, the `/admin/*` routes and the privacy endpoints included;
* `csm`: the full profile with personal data, and lookup by e-mail;
* `analyst`: profiles and predictions with personal data masked;
* `service`: predictions and the profile's features and future, no personal data.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from c360.core.at_rest import file_stamp, write_private
from c360.core.settings import Settings

ROLES = ("admin", "csm", "analyst", "service")
PREFIX = "c360_"  # recognisable in a leaked file or a secret scanner
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class KeyProblem(ValueError):
    """A key that cannot be created, revoked or used: the message says why, in one line; `name` is the key's
    when it is known (a revoked or expired key)."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class Key:
    name: str
    role: str
    sha256: str
    created: str
    expires: str | None = None
    revoked: str | None = None

    def problem(self, at: datetime) -> str | None:
        """Why the key does not open the service at `at` (revoked, expired), or None."""
        if self.revoked is not None:
            return f"key {self.name!r} was revoked"
        if self.expires is not None and datetime.fromisoformat(self.expires) <= at:
            return f"key {self.name!r} expired"
        return None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _read(file: Path) -> list[Key]:
    if not file.is_file():
        return []
    return [Key(**entry) for entry in json.loads(file.read_text())["keys"]]


def _write(file: Path, keys: list[Key]) -> None:
    write_private(file, json.dumps({"keys": [asdict(k) for k in keys]}, indent=1).encode())


@contextmanager
def _locked(s: Settings) -> Iterator[list[Key]]:
    """The keys, to change in place and write back on exit, with the store's lock held."""
    s.keys.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(s.keys.parent, 0o700)
    fd = os.open(s.keys.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        keys = _read(s.keys)
        yield keys
        _write(s.keys, keys)
    finally:
        os.close(fd)  # closing releases the lock


def _active(keys: list[Key], name: str) -> int | None:
    at = _now()
    return next((i for i, k in enumerate(keys) if k.name == name and k.problem(at) is None), None)


def create(s: Settings, name: str, role: str, expires: datetime | None = None, replace_active: bool = False) -> str:
    """A new key named `name` with `role`: the token, which is not stored (only its SHA-256 is). An active key of
    that name is refused, or revoked first with `replace_active`."""
    if not re.match(NAME, name):
        raise KeyProblem(f"invalid key name {name!r}: letters, digits, '_', '.', '-', at most 64 characters")
    if role not in ROLES:
        raise KeyProblem(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    if expires is not None:
        expires = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
        if expires <= _now():
            raise KeyProblem(f"expiry {expires.isoformat()} is in the past")
    token = PREFIX + secrets.token_urlsafe(32)
    with _locked(s) as keys:
        active = _active(keys, name)
        if active is not None and not replace_active:
            raise KeyProblem(f"an active key is already named {name!r}: revoke it first, or choose another name")
        if active is not None:
            keys[active] = replace(keys[active], revoked=_now().isoformat(timespec="seconds"))
        keys.append(Key(name, role, digest(token), _now().isoformat(timespec="seconds"),
                        expires.isoformat(timespec="seconds") if expires else None))
    return token


def revoke(s: Settings, name: str) -> Key:
    """Revoke the active key named `name`; KeyProblem when there is none."""
    with _locked(s) as keys:
        active = _active(keys, name)
        if active is None:
            raise KeyProblem(f"no active key named {name!r} (`c360 keys list` shows them)")
        keys[active] = replace(keys[active], revoked=_now().isoformat(timespec="seconds"))
        return keys[active]


def listed(s: Settings) -> list[Key]:
    """Every key ever created, revoked and expired ones too, oldest first."""
    return _read(s.keys)


class Keys:
    """The store as the service reads it: re-read when the file changes, checked against on every request."""

    def __init__(self, s: Settings) -> None:
        self.file = s.keys
        self.stamp: tuple[int, int, int] | None = None
        self.keys: list[Key] = []

    def _fresh(self) -> list[Key]:
        try:
            st = os.stat(self.file)
            stamp = file_stamp(st)
        except FileNotFoundError:
            stamp = None
        if stamp != self.stamp:
            self.keys, self.stamp = (_read(self.file) if stamp else []), stamp
        return self.keys

    def check(self, token: str) -> Key:
        """The active key of `token`; KeyProblem saying why not (unknown, revoked, expired)."""
        sha = digest(token)
        found = None
        for key in self._fresh():  # a few keys: each compared in constant time
            if hmac.compare_digest(key.sha256, sha):
                found = key
        if found is None:
            raise KeyProblem("unknown API key")
        problem = found.problem(_now())
        if problem:
            raise KeyProblem(problem, found.name)
        return found

"""Personal data at rest: owner-only files, and the DuckDB extension that encrypts databases.

* **Owner-only.** `owner_only()` sets the umask to 0o077, so every file and folder a c360 process creates from then
  on, its own and those of MLflow, Feast, splink and BentoML, is its owner's alone (0600 / 0700). It is called
  where a c360 process starts (the command line, the service), not on import: importing c360 in a notebook does not
  change that notebook's umask. The processes c360 starts (`bentoml serve`, `mlflow ui`) inherit it. A copy that
  keeps its source's mode escapes the umask: `owner_only_tree` corrects those (MLflow's model folders).
* **Encryption.** With `C360_ENCRYPTION_KEY` set, the warehouse is one of DuckDB's encrypted databases (AES-GCM;
  `c360.core.connections` attaches it with the key). DuckDB's built-in crypto only reads them: writing takes
  OpenSSL from its httpfs extension. DuckDB would download that at first use, which fails offline, so it comes
  from PyPI's `duckdb-extension-httpfs` wheel instead, built for one exact duckdb version (both are pinned in
  pyproject.toml) and loaded from its file.
"""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

import duckdb

UMASK = 0o077
WHEEL = "duckdb-extension-httpfs"


MISMATCHES = {  # DuckDB's words → what to do
    "Cannot open encrypted database": "is encrypted: set C360_ENCRYPTION_KEY to its key",
    "is not encrypted": "is not encrypted while C360_ENCRYPTION_KEY is set: run `c360 encrypt` to encrypt it, "
                        "or unset the key",
    "Wrong encryption key": "does not open with C360_ENCRYPTION_KEY: it was encrypted with another key",
}


class EncryptionError(Exception):
    """A database and C360_ENCRYPTION_KEY do not go together, or the key is set and the extension is missing."""

    @classmethod
    def of(cls, err: duckdb.Error, path: Path | str) -> EncryptionError | None:
        """The error to raise for DuckDB's `err` opening `path`, when it is about encryption."""
        for words, advice in MISMATCHES.items():
            if words in str(err):
                return cls(f"the database {path} {advice}")
        return None


def owner_only() -> None:
    """Files and folders created from now on by this process (and the ones it starts) are owner-only."""
    os.umask(UMASK)


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, owner-only and durable: written to a temporary file, fsynced, renamed over it,
    and the folder fsynced so the rename survives a crash. A reader sees the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def file_stamp(st: os.stat_result) -> tuple[int, int, int]:
    """A file's inode, size and modification time: a reader that keeps what it parsed reads again when it changes."""
    return st.st_ino, st.st_size, st.st_mtime_ns


def fsync_dir(path: Path) -> None:
    """Make the entries of folder `path` (a file created or renamed in it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def owner_only_tree(root: Path) -> None:
    """Take group's and others' rights away from `root` and everything under it: for the files a library copies
    with their source's mode (shutil.copy2: MLflow's copies of uv.lock and pyproject.toml), which the umask misses."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(stat.S_IMODE(path.stat().st_mode) & ~UMASK)


def httpfs_extension() -> Path | None:
    """The httpfs extension file of the installed duckdb version, from its PyPI wheel; None when not installed."""
    spec = importlib.util.find_spec(WHEEL.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    found = root / "extensions" / f"v{duckdb.__version__}" / "httpfs.duckdb_extension"
    return found if found.is_file() else None


def load_crypto(con: duckdb.DuckDBPyConnection) -> None:
    """Load the httpfs extension into `con`'s database, so it can write encrypted databases and temporary files."""
    path = httpfs_extension()
    if path is None:
        raise EncryptionError(
            f"C360_ENCRYPTION_KEY is set, but DuckDB's httpfs extension is not installed: "
            f"`pip install {WHEEL}=={duckdb.__version__}` (the version of duckdb), or unset the key")
    con.execute(f"LOAD {quote(str(path))}")


def quote(text: str) -> str:
    """`text` as an SQL string literal (ATTACH takes no parameters)."""
    return "'" + text.replace("'", "''") + "'"

"""c360's Redis online store: Feast's `RedisOnlineStore`, with bulk writes straight from Arrow.

Feast's Redis store writes one `HSET` per entity and view, each value a `ValueProto` built and serialized in Python:
≈ 0.36 ms of CPU per row of 50 features before Redis sees it (bench/redis.py; this store's writer: 14 µs). This
store keeps Feast's layout, so Feast's reads (`get_online_features`, `feast serve`) and its `update`/`teardown` work
on what it writes:

- one hash per entity, under Feast's serialized entity key followed by the project name (`_redis_key`);
- in it, per feature view, a field `mmh3("view:feature")` (4 bytes) holding the value's serialized `Value` (empty
  for a null), and a field `_ts:view` holding the row's event time as a serialized `google.protobuf.Timestamp`.

`write_arrow` encodes the values with the SQLite store's kernels (`online_store.encode_batches`, byte for byte
Feast's own conversion), frames them as Redis protocol (RESP) with Arrow kernels, and sends each batch of
`rows_per_call` rows as one call of a server-side script: per entity, it reads the stored `_ts:view`, and writes the
row only if it is not older (ties: the later write wins, as in c360's SQLite store; Feast's own Redis writes skip a
row of the same time). `write_views` writes several views, each group of `rows_per_call` rows inside one
`MULTI`/`EXEC`: readers see a customer's rows of all views switch at once (for tables with the same rows in the same
order, as a snapshot's views are). A whole load is not one transaction: a run killed midway leaves some customers on
the new rows and the rest on the old, as Feast's materialize does.

`read_columns` reads what `C360OnlineStore.read_columns` reads: an `HMGET` per entity and view, in one pipeline. The
bulk path needs a single Redis server (`redis_type: redis`); with a cluster or Sentinel, `bulk_writer` gives None
and writes go through Feast's `materialize`.

    online_store:
      type: c360.features.redis_store.C360RedisOnlineStore
      connection_string: "localhost:6379"
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast.feature_view import FeatureView
from feast.infra.online_stores.helpers import _mmh3, compute_versioned_name
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, RedisType
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import StrictInt

from c360.features.online_store import (
    EncodedBatch,
    _ragged,
    _varints,
    encode_batches,
    python_value,
    serialized_keys,
    view_join_keys,
)

STORE_TYPE = "c360.features.redis_store.C360RedisOnlineStore"
_BIN = pa.binary()

# KEYS: the entities' Redis keys. ARGV: the arguments per entity n, the key TTL in seconds (0: none), the `_ts:view`
# field, then per entity its n arguments of HSET: `_ts:view`, its Timestamp bytes, and per feature its field and
# Value (already paired: no Lua table is built per entity). A row is written unless the stored one is newer.
# Timestamps are compared as (seconds, nanos) parsed from the protobuf varints: Lua numbers are doubles, exact up to
# 2^53; a 10-byte varint is a negative int64 (a time before 1970), read from its complement. HSET arguments go in
# slices: Lua's unpack stops near 8,000 values.
_SCRIPT = """
local function stamp(b)
  local s, n, i = 0, 0, 1
  while i <= #b do
    local tag, v, w, m, g = string.byte(b, i), 0, 0, 1, 0
    repeat
      i = i + 1
      local c = string.byte(b, i)
      if g < 9 then
        v = v + (c % 128) * m
        w = w + (127 - c % 128) * m
      end
      m = m * 128
      g = g + 1
    until c < 128
    i = i + 1
    if g == 10 then v = -(w + 1) end
    if tag == 8 then s = v elseif tag == 16 then n = v end
  end
  return s, n
end
local n, ttl, tsf = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local written = 0
for k = 1, #KEYS do
  local at = 4 + (k - 1) * n
  local old = redis.call('HGET', KEYS[k], tsf)
  local newer = true
  if old then
    local s, ns = stamp(ARGV[at + 1])
    local os, ons = stamp(old)
    newer = s > os or (s == os and ns >= ons)
  end
  if newer then
    local last = at + n - 1
    for a = at, last, 2000 do
      redis.call('HSET', KEYS[k], unpack(ARGV, a, math.min(a + 1999, last)))
    end
    if ttl > 0 then redis.call('EXPIRE', KEYS[k], ttl) end
    written = written + 1
  end
end
return written
"""


class C360RedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """`online_store:` block of feature_store.yaml for `C360RedisOnlineStore`: Feast's Redis settings, and these."""

    type: Literal["c360.features.redis_store.C360RedisOnlineStore"] = STORE_TYPE  # type: ignore[assignment]
    write_batch_size: StrictInt = 100_000
    """Rows per encoding step of `write_arrow`: bounds memory."""
    rows_per_call: StrictInt = 200
    """Rows per script call (and per `MULTI`/`EXEC` of `write_views`): Redis serves nothing else meanwhile."""


def bulk_writer(config: RepoConfig) -> C360RedisOnlineStore | None:
    """A store to call `write_views` on if feature_store.yaml selects ours on a single Redis server; else None."""
    online = config.online_store
    if isinstance(online, C360RedisOnlineStoreConfig) and online.redis_type == RedisType.redis:
        return C360RedisOnlineStore()
    return None


class C360RedisOnlineStore(RedisOnlineStore):
    """Feast's Redis online store with a bulk write path and a direct read; see the module docstring."""

    def write_arrow(
        self,
        config: RepoConfig,
        feature_view: FeatureView,
        table: pa.Table | pa.RecordBatch | pa.RecordBatchReader | Iterable[pa.RecordBatch],
        *,
        timestamp_field: str | None = None,
        progress: Callable[[int], Any] | None = None,
    ) -> int:
        """Upsert feature rows straight from Arrow (the columns of `C360OnlineStore.write_arrow`); returns the
        rows read. Per entity the row with the newest event time wins, within the table and against what is
        stored (ties: the later write). Feast's Redis layout stores no created time."""
        return self.write_views(config, [(feature_view, table)], timestamp_field=timestamp_field, progress=progress)

    def write_views(self, config: RepoConfig, rows: Sequence[tuple[FeatureView, Any]], *,
                    timestamp_field: str | None = None, progress: Callable[[int], Any] | None = None) -> int:
        """`write_arrow` of several views' tables, the same positions of all tables in one `MULTI`/`EXEC` per
        `rows_per_call` rows; returns the rows read."""
        client = self._get_client(config.online_store)
        sha = client.script_load(_SCRIPT)
        batches = [encode_batches(config, view, table, timestamp_field=timestamp_field, framed=False)
                   for view, table in rows]
        fields = [_fields(config, view) for view, _ in rows]
        written = 0
        # One thread sends a batch and reads its replies while this one encodes the next: Redis works meanwhile.
        with ThreadPoolExecutor(max_workers=1) as sender:
            sent: Future[None] | None = None
            while parts := [(names, batch) for names, batch in zip(fields, (next(b, None) for b in batches),
                                                                    strict=True) if batch is not None]:
                commands = _commands(config, sha, parts)
                if sent is not None:
                    sent.result()
                sent = sender.submit(_send, client, commands)
                rows_read = sum(batch.rows for _, batch in parts)
                written += rows_read
                if progress:
                    progress(rows_read)
            if sent is not None:
                sent.result()
        return written

    def read_columns(self, config: RepoConfig, views: Sequence[tuple[FeatureView, Sequence[str]]],
                     entity_rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
        """What `get_online_features(features, entity_rows).to_dict(include_event_timestamps=True)` returns for
        these views' features (as `C360OnlineStore.read_columns`): one pipelined `HMGET` per entity and view."""
        version = config.entity_key_serialization_version
        project = config.project.encode()
        keys: dict[tuple[tuple[str, Any], ...], list[bytes]] = {}
        commands = []
        for view, features in views:
            join_keys = view_join_keys(view)
            entity = tuple(join_keys.items())
            if entity not in keys:
                columns = {k: [row[k] for row in entity_rows] for k in join_keys}
                keys[entity] = [key + project for key in serialized_keys(columns, join_keys, version)]
            name = compute_versioned_name(view, config.registry.enable_online_feature_view_versioning)
            fields = [f"_ts:{name}".encode(), *(_mmh3(f"{name}:{f}") for f in features)]
            commands.append((features, keys[entity], fields))
        with self._get_client(config.online_store).pipeline(transaction=False) as pipe:
            for _, entity_keys, fields in commands:
                for key in entity_keys:
                    pipe.hmget(key, fields)
            replies = iter(pipe.execute())
        out: dict[str, list[Any]] = {}
        for features, entity_keys, _ in commands:
            found = [next(replies) for _ in entity_keys]
            seconds = [_seconds(reply[0]) for reply in found]
            for i, name in enumerate(features, start=1):
                out[name] = [_value(reply[i]) if reply[0] else None for reply in found]
                out[f"{name}__ts"] = list(seconds)
        return out


def _commands(config: RepoConfig, sha: str, parts: list[tuple[list[bytes], EncodedBatch]]) -> list[list[Any]]:
    """The script calls writing a batch of each view (its fields, its rows), the same rows of all views in one
    `MULTI`/`EXEC` per `rows_per_call` rows."""
    per_call = int(config.online_store.rows_per_call)
    frames = [(_head(config, names), _resp(_redis_keys(config, batch.keys)), _row_args(names, batch))
              for names, batch in parts]
    commands: list[list[Any]] = []
    for start in range(0, max(batch.rows for _, batch in parts), per_call):
        group = [_evalsha(sha, head, keys, values, start, per_call) for head, keys, values in frames
                 if start < len(keys)]
        commands += [_command(b"MULTI"), *group, _command(b"EXEC")] if len(group) > 1 else group
    return commands


def _fields(config: RepoConfig, view: FeatureView) -> list[bytes]:
    """The view's hash fields in Feast's layout: `_ts:view`, then `mmh3("view:feature")` of each feature."""
    name = compute_versioned_name(view, config.registry.enable_online_feature_view_versioning)
    return [f"_ts:{name}".encode(), *(_mmh3(f"{name}:{f.name}") for f in view.features)]


def _head(config: RepoConfig, fields: list[bytes]) -> list[bytes]:
    """The script's arguments before the rows: the arguments per row, the key TTL and the `_ts:view` field."""
    return [str(2 * len(fields)).encode(), str(config.online_store.key_ttl_seconds or 0).encode(), fields[0]]


def _redis_keys(config: RepoConfig, keys: pa.Array) -> pa.Array:
    """Feast's Redis key of each serialized entity key: the key followed by the project name."""
    return pc.binary_join_element_wise(keys, config.project.encode(), b"")


def _row_args(fields: list[bytes], batch: EncodedBatch) -> pa.Array:
    """Per row, its script arguments as RESP: each field of `fields` followed by its value (the Timestamp, then each
    feature's Value)."""
    values = (_timestamps(batch.event_us), *batch.values)
    return pc.binary_join_element_wise(*(part for field, value in zip(fields, values, strict=True)
                                         for part in (_bulk(field), _resp(value))), b"")


def _timestamps(micros: pa.Array) -> pa.Array:
    """`google.protobuf.Timestamp` bytes of µs since the epoch, as `Timestamp.FromDatetime` writes them: seconds
    (field 1) and nanos (field 2) as varints, each left out when 0."""
    seconds, rest = np.divmod(micros.to_numpy(), 1_000_000)
    return pc.binary_join_element_wise(_varint_field(0x08, seconds), _varint_field(0x10, rest * 1000), b"")


def _varint_field(tag: int, values: np.ndarray) -> pa.Array:
    groups, used = _varints(values.astype(np.int64).view(np.uint64))
    m = np.empty((len(values), 1 + groups.shape[1]), dtype=np.uint8)
    m[:, 0], m[:, 1:] = tag, groups
    return pc.if_else(pa.array(values == 0), pa.scalar(b"", _BIN), _ragged(m, 1 + used))


def _resp(values: pa.Array) -> pa.Array:
    """Each value as a RESP bulk string: `$`, its length in decimal, CRLF, the bytes, CRLF."""
    lengths = pc.cast(pc.binary_length(values), pa.string()).cast(_BIN)
    return pc.binary_join_element_wise(b"$", lengths, b"\r\n", values, b"\r\n", b"")


def _evalsha(sha: str, head: list[bytes], keys: pa.Array, values: pa.Array, start: int, size: int) -> list[Any]:
    """One script call on the rows [start, start + size) as RESP: the header, then slices of the framed arrays."""
    k = min(size, len(keys) - start)
    args = [b"EVALSHA", sha.encode(), str(k).encode()]
    total = len(args) + k + len(head) + k * int(head[0])
    prefix = f"*{total}\r\n".encode() + b"".join(_bulk(a) for a in args)
    return [prefix, _slice(keys, start, k), b"".join(_bulk(a) for a in head), _slice(values, start, k)]


def _command(*args: bytes) -> list[bytes]:
    return [f"*{len(args)}\r\n".encode() + b"".join(_bulk(a) for a in args)]


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _slice(array: pa.Array, start: int, size: int) -> memoryview:
    """The bytes of rows [start, start + size) of a binary array, without copying them."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=4 * array.offset)
    return memoryview(array.buffers()[2])[offsets[start]:offsets[start + size]]


def _send(client: Any, commands: list[list[Any]]) -> None:
    """Send the commands on one connection, then read every reply; a Redis error is raised (and the connection,
    replies left unread, dropped)."""
    conn = client.connection_pool.get_connection()
    try:
        conn.send_packed_command([part for command in commands for part in command])
        replies = [conn.read_response() for _ in commands]
    except BaseException:
        conn.disconnect()
        raise
    finally:
        client.connection_pool.release(conn)
    errors = [r for reply in replies for r in (reply if isinstance(reply, list) else [reply])
              if isinstance(r, Exception)]
    if errors:
        raise errors[0]


def _seconds(stamp: bytes | None) -> int:
    if not stamp:
        return 0
    ts = Timestamp.FromString(stamp)
    return int(ts.seconds)


def _value(raw: bytes | None) -> Any:
    return None if not raw else python_value(ValueProto.FromString(raw))

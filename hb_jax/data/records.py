"""JSONL records: schema, stable ids, strict/lenient readers, atomic writers, shard of an id.

Segments: `id`, `text`, `source` (+ `header`, `url` provenance). Pairs: `id`, `instruction`, `output`, and
where they apply `score`, `rating_text`, `method`, `iteration`, `source` (seed | augmented), provenance
(`segment_id`, ...). `id` is a content hash, so reruns and shards agree on names.

Paths are `etils.epath.Path`, so `gs://` works. Local writes are temp-file + fsync + rename; object
stores have no rename, so there the object is written whole (uploads are atomic per object) and then a
`<name>.commit` marker is written; `is_committed` checks the right thing for either.
"""
from __future__ import annotations

import codecs
import collections
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import tempfile
import zlib
from typing import IO, Any, Iterable, Iterator, Sequence

from etils import epath

SEGMENT_REQUIRED = ("id", "text", "source")
PAIR_REQUIRED = ("id", "instruction", "output")
PAIR_SOURCES = ("seed", "augmented")
COMMIT_SUFFIX = ".commit"


class RecordError(ValueError):
  """A malformed record; the message names file:line, what was expected and what was found."""


def content_id(*fields: str) -> str:
  """First 16 hex digits of sha1 over the JSON list of fields (JSON, so field boundaries are unambiguous)."""
  canonical = json.dumps(list(fields), ensure_ascii=False, separators=(",", ":"))
  return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]


def segment_id(text: str) -> str:
  return content_id("segment", text)


def pair_id(instruction: str, output: str) -> str:
  return content_id("pair", instruction, output)


def make_segment(text: str, source: str, **provenance: Any) -> dict:
  return {"id": segment_id(text), "text": text, "source": source, **provenance}


def make_pair(instruction: str, output: str, source: str, **fields: Any) -> dict:
  if source not in PAIR_SOURCES:
    raise ValueError(f"make_pair: expected source in {PAIR_SOURCES}, found {source!r}")
  return {"id": pair_id(instruction, output), "instruction": instruction, "output": output,
          "source": source, **fields}


def is_local(path: epath.PathLike) -> bool:
  return "://" not in os.fspath(path)


@dataclasses.dataclass
class ReadStats:
  """What a lenient read skipped, by reason; `read` counts the records yielded."""
  read: int = 0
  skipped: int = 0
  reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def skip(self, reason: str) -> None:
    self.skipped += 1
    self.reasons[reason] += 1

  def to_dict(self) -> dict:
    return {"read": self.read, "skipped": self.skipped, "reasons": dict(self.reasons)}


def open_bytes(path: epath.PathLike) -> IO[bytes]:
  """Opens a file for binary reading, un-gzipping `.gz` names."""
  path = epath.Path(path)
  f = path.open("rb")
  if path.name.endswith(".gz"):
    return gzip.GzipFile(fileobj=f, mode="rb")
  return f


def check_record(obj: Any, required: Sequence[str]) -> str | None:
  """None if `obj` is a dict whose required fields are non-empty strings, else what is wrong."""
  if not isinstance(obj, dict):
    return f"expected a JSON object, found {type(obj).__name__}"
  for key in required:
    value = obj.get(key)
    if value is None:
      found = "null" if key in obj else f"it missing (fields: {sorted(obj)[:10]})"
      return f"expected field {key!r}, found {found}"
    if not isinstance(value, str):
      return f"expected field {key!r} to be a string, found {type(value).__name__}"
    if not value.strip():
      return f"expected field {key!r} to be non-empty, found {value!r}"
  return None


def iter_jsonl(path: epath.PathLike, required: Sequence[str] = (), strict: bool = True,
               stats: ReadStats | None = None) -> Iterator[tuple[int, dict]]:
  """Streams (line number, record) from a JSONL file (`.gz` too). Blank lines are ignored.

  strict: the first bad line raises RecordError naming file:line. Lenient: bad lines are skipped and
  counted in `stats` by reason (invalid_utf8, invalid_unicode, invalid_json, not_object, missing_field,
  empty_field, wrong_type), and a `.gz` stream that breaks off ends the read (truncated_gzip) after the
  records before it (a last line cut off there is dropped and counted as torn_tail).
  """
  stats = stats if stats is not None else ReadStats()
  with open_bytes(path) as f:
    lines = iter(f)
    lineno = 0
    pending: tuple[int, bytes] | None = None
    while True:
      try:
        raw = next(lines, None)
      except (EOFError, OSError, zlib.error) as e:  # a cut-off or corrupt .gz (BadGzipFile is an OSError)
        if pending is not None:
          yield from _parse_line(path, *pending, required, strict, stats, torn=not pending[1].endswith(b"\n"))
        problem = f"expected a complete gzip stream, found {type(e).__name__}: {e}"
        if strict:
          raise RecordError(f"{path}:{lineno + 1}: {problem}") from e
        stats.skip("truncated_gzip")
        return
      if raw is None:
        break
      lineno += 1
      if pending is not None:
        yield from _parse_line(path, *pending, required, strict, stats, torn=False)
      pending = (lineno, raw)
    if pending is not None:
      yield from _parse_line(path, *pending, required, strict, stats, torn=False)


# A \uD800-\uDFFF escape: json.loads accepts one alone (half of an emoji cut by a scraper), but such a
# string cannot be written back as UTF-8, so it would fail far from here, at the next write.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _lone_surrogate_field(obj: Any, where: str = "") -> str | None:
  """The first field (dotted path) of obj holding a string that is not valid Unicode, or None."""
  if isinstance(obj, str):
    try:
      obj.encode("utf-8")
    except UnicodeEncodeError:
      return where or "(value)"
  elif isinstance(obj, dict):
    for k, v in obj.items():
      bad = _lone_surrogate_field(v, f"{where}.{k}" if where else str(k))
      if bad:
        return bad
  elif isinstance(obj, list):
    for i, v in enumerate(obj):
      bad = _lone_surrogate_field(v, f"{where}[{i}]")
      if bad:
        return bad
  return None


def json_error_detail(err: json.JSONDecodeError, line: str) -> str:
  """What json says and where, as a 1-based column of `line` (one JSONL line without its newline), saying
  when that is past its end. json's messages that end in "at" ("Unterminated string starting at") do not
  get a second one."""
  msg = err.msg[:-3] if err.msg.endswith(" at") else err.msg
  return f"{msg} at column {err.pos + 1}" + (" (the end of the line)" if err.pos >= len(line) else "")


def _parse_line(path, lineno: int, raw: bytes, required, strict: bool, stats: ReadStats,
                torn: bool) -> Iterator[tuple[int, dict]]:
  if lineno == 1 and raw.startswith(codecs.BOM_UTF8):  # written by some Windows tools; not part of the JSON
    raw = raw[len(codecs.BOM_UTF8):]
  if not raw.strip():
    return
  problem, reason, obj = None, None, None
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    problem, reason = f"expected UTF-8, found invalid byte at column {e.start + 1}", "invalid_utf8"
  else:
    line = text.rstrip("\r\n")  # without its newline, a string cut off at the end reads as unterminated
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      problem, reason = f"expected JSON, found {json_error_detail(e, line)}", "invalid_json"
    else:
      bad = _lone_surrogate_field(obj) if _SURROGATE_ESCAPE.search(raw) else None
      if bad:
        problem, reason = (f"expected valid Unicode, found a lone surrogate escape (\\uD800-\\uDFFF) in field "
                           f"{bad!r}"), "invalid_unicode"
  if problem is None:
    problem = check_record(obj, required)
    if problem is not None:
      reason = ("not_object" if not isinstance(obj, dict) else
                "missing_field" if "missing" in problem else
                "empty_field" if "non-empty" in problem else "wrong_type")
  if problem is None:
    stats.read += 1
    yield lineno, obj
    return
  if torn and reason in ("invalid_json", "invalid_utf8"):
    stats.skip("torn_tail")
    return
  if strict:
    raise RecordError(f"{path}:{lineno}: {problem}")
  stats.skip(reason)


def read_jsonl(path: epath.PathLike, required: Sequence[str] = (), strict: bool = True,
               stats: ReadStats | None = None) -> Iterator[dict]:
  """Records only; see iter_jsonl."""
  for _, obj in iter_jsonl(path, required, strict, stats):
    yield obj


def read_segments(path, strict: bool = True, stats: ReadStats | None = None) -> Iterator[dict]:
  return read_jsonl(path, SEGMENT_REQUIRED, strict, stats)


def read_pairs(path, strict: bool = True, stats: ReadStats | None = None) -> Iterator[dict]:
  return read_jsonl(path, PAIR_REQUIRED, strict, stats)


def unique_by_id(recs: Iterable[dict]) -> list[dict]:
  """The first record of each id, in input order (ids are content hashes: a repeat is the same record)."""
  seen: set = set()
  return [r for r in recs if not (r["id"] in seen or seen.add(r["id"]))]


def dumps(record: dict) -> str:
  """One JSONL line without its newline. ensure_ascii=False keeps text readable and files small."""
  return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def commit_marker(path: epath.PathLike) -> epath.Path:
  path = epath.Path(path)
  return path.parent / (path.name + COMMIT_SUFFIX)


def is_committed(path: epath.PathLike) -> bool:
  """A local file exists only once complete (rename); a remote one counts once its marker exists."""
  path = epath.Path(path)
  if is_local(path):
    return path.exists()
  return path.exists() and commit_marker(path).exists()


def write_bytes_atomic(path: epath.PathLike, data: bytes) -> None:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(path):
    marker = commit_marker(path)
    if marker.exists():
      marker.unlink()  # a rewrite is uncommitted until it is complete
    path.write_bytes(data)
    marker.write_text("")
    return
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=os.fspath(path.parent))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, os.fspath(path))
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  _fsync_dir(os.fspath(path.parent))


def _fsync_dir(directory: str) -> None:
  # Makes the rename itself durable; not every filesystem allows opening a directory.
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


class AtomicJsonlWriter:
  """Streams records to a temp file beside the target and renames it into place on `close()`.

  Used as a context manager, an exception leaves the target untouched (nothing half-written).
  For object stores, records are buffered in memory and uploaded whole with a commit marker.
  """

  def __init__(self, path: epath.PathLike):
    self.path = epath.Path(path)
    self.count = 0
    self._local = is_local(self.path)
    if self._local:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                       dir=os.fspath(self.path.parent))
      self._f: IO[bytes] = os.fdopen(fd, "wb")
    else:
      self._f = io.BytesIO()

  def write(self, record: dict) -> None:
    self._f.write(dumps(record).encode("utf-8") + b"\n")
    self.count += 1

  def close(self) -> None:
    if self._local:
      self._f.flush()
      os.fsync(self._f.fileno())
      self._f.close()
      os.replace(self._tmp, os.fspath(self.path))
      _fsync_dir(os.fspath(self.path.parent))
    else:
      write_bytes_atomic(self.path, self._f.getvalue())

  def abort(self) -> None:
    self._f.close()
    if self._local and os.path.exists(self._tmp):
      os.unlink(self._tmp)

  def __enter__(self) -> "AtomicJsonlWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def write_jsonl(path: epath.PathLike, records: Iterable[dict]) -> int:
  """Writes all records atomically; returns how many."""
  with AtomicJsonlWriter(path) as w:
    for r in records:
      w.write(r)
  return w.count


def shard_of(record_id: str, count: int) -> int:
  """Deterministic shard of an id (ids are hex hashes; other strings are hashed first)."""
  try:
    value = int(record_id[:8], 16)
  except ValueError:
    value = int(hashlib.sha1(record_id.encode("utf-8")).hexdigest()[:8], 16)
  return value % count


def write_json(path: epath.PathLike, obj: Any) -> None:
  """A small JSON file (stats, manifests), written atomically."""
  write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())

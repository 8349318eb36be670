"""Evaluation files: JSONL records or AlpacaEval's JSON list, read with positions; atomic writes.

AlpacaEval's model outputs are one JSON list of objects with `instruction`, `output` and `generator`
(its evaluation set also carries `dataset`). Our pipeline writes JSONL. Both are accepted wherever a file of
instructions or outputs is read; every record comes with `where` (`file:line` for JSONL, `file[index]` for a
JSON list) so an error points at the record.
"""
from __future__ import annotations

import json
from typing import Any, Iterator, Sequence

from etils import epath

from hb_jax.data import records


class EvalError(ValueError):
  """A malformed evaluation input or an impossible request; the message says what, where, and what was found."""


def _is_json_list(path: epath.PathLike) -> bool:
  with records.open_bytes(path) as f:
    while True:
      chunk = f.read(4096)
      if not chunk:
        return False
      stripped = chunk.lstrip()
      if stripped:
        return stripped[:1] == b"["


def iter_objects(path: epath.PathLike) -> Iterator[tuple[str, Any]]:
  """(where, value) for each record of a JSONL file or each element of a JSON list (`.gz` too)."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such file")
  if _is_json_list(path):
    with records.open_bytes(path) as f:
      try:
        data = json.loads(f.read().decode("utf-8"))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvalError(f"{path}: expected a JSON list (the file starts with '['), found invalid JSON: {e}") from e
    for i, obj in enumerate(data):
      yield f"{path}[{i}]", obj
    return
  for lineno, obj in records.iter_jsonl(path):
    yield f"{path}:{lineno}", obj


def _check_fields(where: str, obj: Any, fields: Sequence[str], non_empty: Sequence[str]) -> dict:
  if not isinstance(obj, dict):
    raise EvalError(f"{where}: expected a JSON object, found {type(obj).__name__}")
  for key in fields:
    if key not in obj:
      raise EvalError(f"{where}: expected field {key!r}, found it missing (fields: {sorted(obj)[:10]})")
    if not isinstance(obj[key], str):
      raise EvalError(f"{where}: expected field {key!r} to be a string, found {type(obj[key]).__name__}")
    if key in non_empty and not obj[key].strip():
      raise EvalError(f"{where}: expected field {key!r} to be non-empty, found {obj[key]!r}")
  return obj


def read_instructions(path: epath.PathLike) -> Iterator[tuple[str, dict]]:
  """(where, record) with a non-empty string `instruction`, in file order, streamed (JSONL) as read."""
  return ((w, _check_fields(w, o, ("instruction",), ("instruction",))) for w, o in iter_objects(path))


def read_outputs(path: epath.PathLike) -> list[tuple[str, dict]]:
  """(where, record) with a non-empty `instruction` and a string `output` (an empty answer is an answer)."""
  return [(w, _check_fields(w, o, ("instruction", "output"), ("instruction",))) for w, o in iter_objects(path)]


def write_json_list(path: epath.PathLike, items: Sequence[dict]) -> None:
  """A JSON list (AlpacaEval's layout: indented, UTF-8 as is), written atomically."""
  text = json.dumps(list(items), indent=2, ensure_ascii=False) + "\n"
  records.write_bytes_atomic(path, text.encode("utf-8"))


def write_summary(path: epath.PathLike | None, summary: dict) -> None:
  """The JSON summary every evaluator returns, written atomically when a path is given."""
  if path:
    records.write_json(path, summary)

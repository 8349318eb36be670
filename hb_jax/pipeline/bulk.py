"""Resumable, multi-process bulk work over records (generation, scoring), committed chunk by chunk.

Process p of P takes the records whose id hashes to p (records.shard_of), in input order, and cuts them into
chunks of `chunk_records`. Each finished chunk is one object, `parts/<name>-pPPPofQQQ-cCCCCC.jsonl`, written
atomically (rename locally, whole upload + commit marker on object stores). A rerun skips committed chunks
and redoes an unfinished one whole, with exactly the batch it had before, so results do not depend on
where a run was killed. `merge` reads every process's chunks and writes one file in input order.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Sequence

from etils import epath
from tqdm.auto import tqdm

from hb_jax.data import records


@dataclasses.dataclass(frozen=True)
class Share:
  """This process's place in the job."""
  index: int = 0
  count: int = 1


def chunk_path(parts: epath.Path, name: str, share: Share, chunk: int) -> epath.Path:
  return parts / f"{name}-p{share.index:03d}of{share.count:03d}-c{chunk:06d}.jsonl"


def my_chunks(inputs: Sequence[dict], share: Share, chunk_records: int) -> list[list[dict]]:
  mine = [r for r in inputs if records.shard_of(r["id"], share.count) == share.index]
  return [mine[i:i + chunk_records] for i in range(0, len(mine), chunk_records)]


def run(inputs: Sequence[dict], parts: epath.PathLike, name: str, fn: Callable[[list[dict]], list[dict]], *,
        share: Share = Share(), chunk_records: int = 256, desc: str = "", progress: bool = True) -> int:
  """Applies `fn` (a chunk of input records -> output records) to this process's share; returns how many
  chunks it computed (0 when everything was already committed)."""
  parts = epath.Path(parts)
  chunks = my_chunks(inputs, share, chunk_records)
  todo = [(i, c) for i, c in enumerate(chunks) if not records.is_committed(chunk_path(parts, name, share, i))]
  bar = tqdm(total=sum(len(c) for c in chunks), initial=sum(len(c) for c in chunks) - sum(len(c) for _, c in todo),
             desc=desc or name, disable=not progress, dynamic_ncols=True)
  for i, chunk in todo:
    out = fn(chunk)
    records.write_jsonl(chunk_path(parts, name, share, i), out)
    bar.update(len(chunk))
  bar.close()
  return len(todo)


def merge(inputs: Sequence[dict], parts: epath.PathLike, name: str, out: epath.PathLike, key: str, *,
          process_count: int, chunk_records: int) -> int:
  """Writes every process's chunk outputs to `out` in the order of `inputs` (output field `key` names the
  input id; an input may have no output). Refuses if a chunk of any process is missing."""
  parts = epath.Path(parts)
  by_input: dict[str, list[dict]] = {}
  missing = []
  for p in range(process_count):
    share = Share(p, process_count)
    for i in range(len(my_chunks(inputs, share, chunk_records))):
      path = chunk_path(parts, name, share, i)
      if not records.is_committed(path):
        missing.append(path.name)
        continue
      for r in records.read_jsonl(path):
        by_input.setdefault(r[key], []).append(r)
  if missing:
    raise FileNotFoundError(f"merge {name}: expected every chunk under {parts}, found {len(missing)} missing "
                            f"(e.g. {missing[:3]}); a process has not finished its share")

  def ordered():
    for r in inputs:
      yield from by_input.get(r["id"], [])
  return records.write_jsonl(out, ordered())


def count_done(inputs: Sequence[dict], parts: epath.PathLike, name: str, share: Share, chunk_records: int) -> int:
  """Committed chunks of this share (progress reporting and tests)."""
  parts = epath.Path(parts)
  return sum(records.is_committed(chunk_path(parts, name, share, i))
             for i in range(len(my_chunks(inputs, share, chunk_records))))

"""Resumable, multi-process bulk work over records (generation, scoring), committed chunk by chunk.

Every bulk pass uses this one engine: augmentation, the curation methods, evaluation answers (hb_jax.pipeline)
and `generate_jsonl` (hb_jax.sample.bulk).

Process p of P takes the records whose id hashes to p (records.shard_of), in input order, and cuts them into
chunks of `chunk_records`. Each finished chunk is one object, `parts/<name>-pPPPofQQQ-cCCCCC-<hash>.jsonl`,
written atomically (rename locally, whole upload + commit marker on object stores). The hash covers the
chunk's records and the caller's `settings`, so a rerun after the input or the settings changed computes
the chunks that changed instead of trusting files of another job. A rerun skips committed chunks and redoes
an unfinished one whole, with exactly the batch it had before, so results do not depend on where a run was
killed. `merge` reads every process's chunks and writes one file in input order.

The chunks to compute flow through a grain pipeline: `source(chunks).map(encode)` read with a thread and a
small prefetch buffer, so the host work of a chunk (tokenizing its prompts: a curation prompt is ~1,000
tokens, five encodings for `digits`) runs while the device generates or scores the previous one. Length
bucketing happens inside each chunk (hb_jax.sample.plan.group_by_length, called by the sampler and the
scorer), a pure function of the chunk, so the batches a chunk runs do not depend on the rest of the input.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from typing import Any, Callable, Sequence

import grain
from etils import epath
from tqdm.auto import tqdm

from hb_jax.data import records


@dataclasses.dataclass(frozen=True)
class Share:
  """This process's place in the job."""
  index: int = 0
  count: int = 1


def fingerprint(recs: Sequence[dict], settings: str = "") -> str:
  """12 hex digits of sha1 over `settings` and the records' fields (keys starting with "_" are the caller's
  notes, e.g. where a record was read, and are left out)."""
  h = hashlib.sha1(settings.encode("utf-8"))
  for r in recs:
    fields = {k: v for k, v in r.items() if not k.startswith("_")}
    h.update(json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8") + b"\n")
  return h.hexdigest()[:12]


def chunk_path(parts: epath.Path, name: str, share: Share, chunk: int, chunk_recs: Sequence[dict] = (),
               settings: str = "") -> epath.Path:
  return (parts / f"{name}-p{share.index:03d}of{share.count:03d}-c{chunk:06d}-"
          f"{fingerprint(chunk_recs, settings)}.jsonl")


def my_chunks(inputs: Sequence[dict], share: Share, chunk_records: int) -> list[list[dict]]:
  ids = [r["id"] for r in inputs]
  if len(set(ids)) != len(ids):
    counts = collections.Counter(ids)
    dup = next(i for i in ids if counts[i] > 1)
    raise ValueError(f"chunked: input ids must be unique (outputs are merged by id), found {dup!r} "
                     f"{counts[dup]} times")
  mine = [r for r in inputs if records.shard_of(r["id"], share.count) == share.index]
  return [mine[i:i + chunk_records] for i in range(0, len(mine), chunk_records)]


def run(inputs: Sequence[dict], parts: epath.PathLike, name: str, fn: Callable[..., list[dict]], *,
        encode: Callable[[dict], Any] | None = None, share: Share = Share(), chunk_records: int = 256,
        desc: str = "", progress: bool = True, max_chunks: int | None = None,
        postfix: Callable[[], dict[str, str]] | None = None, settings: str = "") -> int:
  """Applies `fn` to this process's share, one chunk at a time; returns how many chunks it computed (0 when
  everything was already committed).

  fn(chunk records) -> output records; with `encode`, fn(chunk records, [encode(r) for r in chunk]) and the
  encoding runs ahead in grain's prefetch thread. `max_chunks` stops after that many (tests of resumption);
  `postfix` adds live figures (e.g. tokens/s) to the progress bar after each chunk. `settings`: everything
  else the outputs depend on (e.g. sampling settings), folded into the chunk names.
  """
  parts = epath.Path(parts)
  chunks = my_chunks(inputs, share, chunk_records)
  paths = [chunk_path(parts, name, share, i, c, settings) for i, c in enumerate(chunks)]
  todo = [(i, c) for i, c in enumerate(chunks) if not records.is_committed(paths[i])]
  if max_chunks is not None:
    todo = todo[:max_chunks]
  bar = tqdm(total=sum(len(c) for c in chunks), initial=sum(len(c) for c in chunks) - sum(len(c) for _, c in todo),
             desc=desc or name, disable=not progress, dynamic_ncols=True)
  for i, chunk, encoded in _prepared(todo, encode):
    out = fn(chunk) if encode is None else fn(chunk, encoded)
    records.write_jsonl(paths[i], out)
    bar.update(len(chunk))
    if postfix is not None:
      bar.set_postfix(postfix())
  bar.close()
  return len(todo)


def _prepared(todo: list[tuple[int, list[dict]]], encode: Callable[[dict], Any] | None):
  """(index, chunk, encodings) for each chunk to compute, encoded one chunk ahead by a grain reader thread."""
  if not todo:
    return iter(())
  ds = grain.MapDataset.source(todo).map(
      lambda item: (item[0], item[1], None if encode is None else [encode(r) for r in item[1]]))
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)))


def merge(inputs: Sequence[dict], parts: epath.PathLike, name: str, out: epath.PathLike, key: str, *,
          process_count: int, chunk_records: int, settings: str = "") -> int:
  """Writes every process's chunk outputs to `out` in the order of `inputs` (output field `key` names the
  input id; an input may have no output). Refuses if a chunk of any process is missing."""
  parts = epath.Path(parts)
  by_input: dict[str, list[dict]] = {}
  missing = []
  for p in range(process_count):
    share = Share(p, process_count)
    for i, chunk in enumerate(my_chunks(inputs, share, chunk_records)):
      path = chunk_path(parts, name, share, i, chunk, settings)
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


def count_done(inputs: Sequence[dict], parts: epath.PathLike, name: str, share: Share, chunk_records: int,
               settings: str = "") -> int:
  """Committed chunks of this share (progress reporting and tests)."""
  parts = epath.Path(parts)
  return sum(records.is_committed(chunk_path(parts, name, share, i, c, settings))
             for i, c in enumerate(my_chunks(inputs, share, chunk_records)))


def is_complete(inputs: Sequence[dict], parts: epath.PathLike, name: str, *, process_count: int,
                chunk_records: int, settings: str = "") -> bool:
  """Whether every process has committed every chunk of its share (what `merge` needs)."""
  return all(count_done(inputs, parts, name, Share(p, process_count), chunk_records, settings)
             == len(my_chunks(inputs, Share(p, process_count), chunk_records)) for p in range(process_count))

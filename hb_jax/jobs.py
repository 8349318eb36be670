"""One resumable, multi-process bulk-inference job over records (generation, scoring), committed chunk by chunk.

Every bulk pass is a `BulkJob`: the pipeline's augment, curate and held-out answers (hb_jax.pipeline.stages),
AlpacaEval answers (hb_jax.eval.generate, tools/eval_generate.py), and `generate_jsonl` below (a JSONL of
prompts through the sampler).

    job = BulkJob(records_or_reader, "out.jsonl", parts="out.jsonl.parts", name="gen", settings=settings)
    job.run(fn, encode=encode, barrier=barrier)    # every process; fn(chunk, encodings) -> output records

The input is a list or a function returning a fresh iterator (the job reads it a few times and holds one
chunk per process, never the whole input). The first pass checks the ids once (`unique_ids`: non-empty
strings, none repeated: outputs are merged by id) and names every chunk. Process p of P takes the records
whose id hashes to p (records.shard_of), in input order, and cuts them into chunks of `chunk_records`. Each
finished chunk is one object, `parts/<name>-pPPPofQQQ-cCCCCCC-<hash>.jsonl`, written atomically (rename
locally, whole upload + commit marker on object stores). The hash covers the chunk's records and the
caller's `settings` (everything else the outputs depend on), so a rerun after the input or the settings
changed computes the chunks that changed instead of trusting files of another job. A rerun skips committed
chunks and redoes an unfinished one whole, with exactly the batch it had before, so results do not depend on
where a run was killed. After a barrier, process 0 writes every process's outputs to `out` in input order.
With `keep_parts=False` it then removes the parts and writes `<out>.done` holding the job's fingerprint (its
settings and whole input), and a rerun of that same job does nothing.

The host work of a chunk (`encode`: tokenizing its prompts; a curation prompt is ~1,000 tokens, five
encodings for `digits`) runs on a worker thread one chunk ahead, while the device generates or scores the
previous one. Length bucketing happens inside each chunk (hb_jax.sample.plan.group_by_length, called by the
sampler and the scorer), a pure function of the chunk, so the batches a chunk runs do not depend on the rest
of the input.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, Union

from etils import epath
from tqdm.auto import tqdm

from hb_jax.data import records
from hb_jax.sample import plan

if TYPE_CHECKING:
  from hb_jax.sample.sampler import Sampler
  from hb_jax.sample.sampling import Sampling

# A list of records, or a function returning a fresh iterator over them (a file read anew on each call).
Inputs = Union[Sequence[dict], Callable[[], Iterable[dict]]]


@dataclasses.dataclass(frozen=True)
class Share:
  """This process's place in the job."""
  index: int = 0
  count: int = 1


def unique_ids(located: Iterable[tuple[str | int, dict]]) -> Iterator[dict]:
  """The records of (where, record) pairs, refusing an `id` that is not a non-empty string or that an earlier
  record has (bulk outputs are merged by id). `where` names the record in the error: "file:line", or the
  record's 1-based position in an input without one."""
  first: dict[str, str | int] = {}
  for where, rec in located:
    rid = rec.get("id") if isinstance(rec, dict) else None
    if not isinstance(rid, str) or not rid.strip():
      raise records.RecordError(f"{_place(where)}: expected an 'id' (a non-empty string), found {rid!r}")
    if rid in first:
      raise records.RecordError(f"{_place(where)}: duplicate id {rid!r} ({_earlier(first[rid], where)}); "
                                "ids name records, so each must be unique")
    first[rid] = where
    yield rec


def _place(where: str | int) -> str:
  return where if isinstance(where, str) else f"input record {where}"


def _earlier(first: str | int, where: str | int) -> str:
  file, _, line = _place(first).rpartition(":")
  if file and isinstance(where, str) and where.startswith(file + ":"):
    return f"first on line {line}"
  return f"first at {_place(first)}"


def _canonical(rec: dict) -> bytes:
  # Keys starting with "_" are the caller's notes (e.g. `_where`, where a record was read), not its content.
  fields = {k: v for k, v in rec.items() if not k.startswith("_")}
  return json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8") + b"\n"


def fingerprint(recs: Iterable[dict], settings: str = "") -> str:
  """12 hex digits of sha1 over `settings` and the records' fields (notes starting with "_" left out)."""
  h = hashlib.sha1(settings.encode("utf-8"))
  for r in recs:
    h.update(_canonical(r))
  return h.hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Chunk:
  path: epath.Path
  size: int


@dataclasses.dataclass(frozen=True)
class Plan:
  """Every process's chunks (in input order) and the fingerprint of the whole job."""
  chunks: tuple[tuple[Chunk, ...], ...]
  fingerprint: str


@dataclasses.dataclass(frozen=True)
class JobResult:
  computed: int   # chunks this call computed on this process (0: everything was committed already)
  complete: bool  # every process's chunks are committed (process 0 has written `out`)


# A failpoint for preemption tests: HB_JAX_KILL_AFTER_COMMIT=<job name>:<chunk index> makes this process SIGKILL
# itself right after committing that chunk of its share, a kill at a known point (a timed kill may land after
# the run has finished, proving nothing).
KILL_AFTER_COMMIT = "HB_JAX_KILL_AFTER_COMMIT"


def _kill_if_asked(where: str) -> None:
  if os.environ.get(KILL_AFTER_COMMIT) == where:
    os.kill(os.getpid(), signal.SIGKILL)


class BulkJob:
  """One bulk pass: its input, where its chunks and its merged output go, and how chunks are named.

  key: the output field naming the input id an output belongs to (an input may have no output, or several).
  settings: everything else the outputs depend on (sampling settings, the model's config), folded into the
  chunk names and the job fingerprint. keep_parts=False: after the merge, remove the parts and write the
  `<out>.done` marker (see the module docstring). write(out, outputs in input order): how the merged file is
  written (JSONL by default; AlpacaEval answers are one JSON list).
  """

  def __init__(self, inputs: Inputs, out: epath.PathLike, *, parts: epath.PathLike, name: str, key: str = "id",
               share: Share = Share(), chunk_records: int = 256, settings: str = "", keep_parts: bool = True,
               write: Callable[[epath.Path, Iterable[dict]], Any] = records.write_jsonl):
    if not callable(inputs) and iter(inputs) is inputs:
      raise TypeError(f"BulkJob {name}: the input is read more than once; expected a list or a function "
                      f"returning a fresh iterator, found a one-shot {type(inputs).__name__}")
    if chunk_records < 1:
      raise ValueError(f"BulkJob {name}: expected chunk_records >= 1, found {chunk_records}")
    self.inputs, self.out, self.parts = inputs, epath.Path(out), epath.Path(parts)
    self.name, self.key, self.share, self.chunk_records = name, key, share, chunk_records
    self.settings, self.keep_parts, self.write = settings, keep_parts, write
    self.marker = self.out.parent / (self.out.name + ".done")
    self._plan: Plan | None = None

  def records(self) -> Iterator[dict]:
    return iter(self.inputs() if callable(self.inputs) else self.inputs)

  def chunk_path(self, process: int, index: int, digest: str) -> epath.Path:
    """`digest`: the chunk's fingerprint (its records and the settings)."""
    return self.parts / f"{self.name}-p{process:03d}of{self.share.count:03d}-c{index:06d}-{digest}.jsonl"

  def plan(self) -> Plan:
    """The first pass over the input (ids checked here, once); kept for the job's later steps."""
    if self._plan is None:
      count, base = self.share.count, hashlib.sha1(self.settings.encode("utf-8"))
      whole = base.copy()
      chunks: list[list[Chunk]] = [[] for _ in range(count)]
      filling: list[tuple[Any, int] | None] = [None] * count  # per process: (hash so far, records so far)

      def close(p: int) -> None:
        h, n = filling[p]
        chunks[p].append(Chunk(self.chunk_path(p, len(chunks[p]), h.hexdigest()[:12]), n))
        filling[p] = None

      for rec in unique_ids((r.get("_where", i + 1), r) for i, r in enumerate(self.records())):
        line = _canonical(rec)
        whole.update(line)
        p = records.shard_of(rec["id"], count)
        h, n = filling[p] or (base.copy(), 0)
        h.update(line)
        filling[p] = (h, n + 1)
        if n + 1 == self.chunk_records:
          close(p)
      for p in range(count):
        if filling[p] is not None:
          close(p)
      self._plan = Plan(tuple(map(tuple, chunks)), whole.hexdigest()[:12])
    return self._plan

  def is_done(self) -> bool:
    """Whether `out` is this job's finished output (keep_parts=False jobs; their marker names the job)."""
    return (self.marker.exists() and self.marker.read_text().strip() == self.plan().fingerprint
            and self.out.exists())

  def count_done(self, process: int | None = None) -> int:
    """Committed chunks of a process (default: this one)."""
    mine = self.plan().chunks[self.share.index if process is None else process]
    return sum(records.is_committed(c.path) for c in mine)

  def missing(self) -> list[epath.Path]:
    """Every process's chunks not yet committed."""
    return [c.path for mine in self.plan().chunks for c in mine if not records.is_committed(c.path)]

  def _my_chunks(self, wanted: set[int]) -> Iterator[tuple[int, list[dict]]]:
    """(index, records) of this process's chunks in `wanted`, read from the input in order."""
    last, index, chunk = max(wanted, default=-1), 0, []
    for rec in self.records():
      if index > last:
        return
      if records.shard_of(rec["id"], self.share.count) != self.share.index:
        continue
      chunk.append(rec)
      if len(chunk) == self.chunk_records:
        if index in wanted:
          yield index, chunk
        index, chunk = index + 1, []
    if chunk and index in wanted:
      yield index, chunk

  def compute(self, fn: Callable[..., list[dict]], *, encode: Callable[[dict], Any] | None = None, desc: str = "",
              progress: bool = True, max_chunks: int | None = None,
              postfix: Callable[[], dict[str, str]] | None = None) -> int:
    """Applies `fn` to this process's uncommitted chunks, committing each; returns how many it computed.

    fn(chunk records) -> output records; with `encode`, fn(chunk records, [encode(r) for r in chunk]), the
    encoding done one chunk ahead on a worker thread. `max_chunks` stops after that many (tests of
    resumption); `postfix` adds live figures (e.g. tokens/s) to the progress bar after each chunk.
    """
    mine = self.plan().chunks[self.share.index]
    todo = [i for i, c in enumerate(mine) if not records.is_committed(c.path)][:max_chunks]
    total = sum(c.size for c in mine)
    bar = tqdm(total=total, initial=total - sum(mine[i].size for i in todo), desc=desc or self.name,
               disable=not progress, dynamic_ncols=True)
    for i, chunk, encoded in _encoded_ahead(self._my_chunks(set(todo)), encode):
      path = self.chunk_path(self.share.index, i, fingerprint(chunk, self.settings))
      if path != mine[i].path:
        raise RuntimeError(f"BulkJob {self.name}: the input changed while the job ran (chunk {i} is now "
                           f"{path.name}, was {mine[i].path.name}); rerun it")
      records.write_jsonl(path, fn(chunk) if encode is None else fn(chunk, encoded))
      _kill_if_asked(f"{self.name}:{i}")
      bar.update(len(chunk))
      if postfix is not None:
        bar.set_postfix(postfix())
    bar.close()
    return len(todo)

  def outputs(self) -> Iterator[dict]:
    """Every process's outputs in input order; refuses while a chunk of any process is missing. Holds one
    chunk's outputs per process at a time."""
    missing = self.missing()
    if missing:
      raise FileNotFoundError(f"{self.name}: expected every chunk under {self.parts}, found {len(missing)} "
                              f"missing (e.g. {[p.name for p in missing[:3]]}); a process has not finished "
                              "its share")
    chunks, count = self.plan().chunks, self.share.count
    seen, loaded = [0] * count, [(-1, {})] * count  # per process: records passed, (chunk index, outputs by key)
    for rec in self.records():
      p = records.shard_of(rec["id"], count)
      i, seen[p] = seen[p] // self.chunk_records, seen[p] + 1
      if loaded[p][0] != i:
        by_key: dict[str, list[dict]] = {}
        for r in records.read_jsonl(chunks[p][i].path):
          by_key.setdefault(r[self.key], []).append(r)
        loaded[p] = (i, by_key)
      yield from loaded[p][1].get(rec["id"], [])

  def run(self, fn: Callable[..., list[dict]], *, encode: Callable[[dict], Any] | None = None,
          barrier: Callable[[str], None] | None = None, desc: str = "", progress: bool = True,
          max_chunks: int | None = None, postfix: Callable[[], dict[str, str]] | None = None) -> JobResult:
    """The whole job on this process: its share (`compute`), then, once every process has committed its
    share, process 0 writes `out`. `barrier(name)` waits for every process (the pipeline's; none for one
    process or independent ones); without it, or with `max_chunks`, process 0 writes `out` only when it finds
    every chunk committed."""
    if not self.keep_parts and self.is_done():
      return JobResult(0, True)
    computed = self.compute(fn, encode=encode, desc=desc, progress=progress, max_chunks=max_chunks,
                            postfix=postfix)
    synced = barrier is not None and max_chunks is None
    if synced:
      barrier(f"{self.name}-computed")
    complete = not self.missing()
    if self.share.index == 0 and (complete or synced):  # after a barrier, a missing chunk is an error
      self.write(self.out, self.outputs())
      if not self.keep_parts:
        records.write_bytes_atomic(self.marker, f"{self.plan().fingerprint}\n".encode())
        self.parts.rmtree(missing_ok=True)  # none when the input is empty
    if synced:
      barrier(f"{self.name}-merged")
    return JobResult(computed, complete)


def _encoded_ahead(chunks: Iterator[tuple[int, list[dict]]], encode: Callable[[dict], Any] | None):
  """(index, chunk, encodings) for each chunk, the next chunk encoded on a worker thread meanwhile."""
  if encode is None:
    for i, chunk in chunks:
      yield i, chunk, None
    return
  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bulk-encode") as pool:
    ahead = None
    for i, chunk in chunks:
      encoding = pool.submit(lambda c: [encode(r) for r in c], chunk)
      if ahead is not None:
        yield ahead[0], ahead[1], ahead[2].result()
      ahead = (i, chunk, encoding)
    if ahead is not None:
      yield ahead[0], ahead[1], ahead[2].result()


# ------------------------------------------------------------------------------------------ generate_jsonl
def check_tokens(rec: dict, tokens: Any, vocab_size: int) -> list[int]:
  """The record's prompt token ids, or a RecordError naming its file:line."""
  if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
    raise records.RecordError(f"{rec['_where']}: record {rec['id']!r}: expected 'tokens' to be a list of token "
                              f"ids, found {str(tokens)[:60]}")
  if not tokens:
    raise records.RecordError(f"{rec['_where']}: record {rec['id']!r}: the prompt is empty; it needs at least "
                              "one token")
  bad = [t for t in tokens if not 0 <= t < vocab_size]
  if bad:
    raise records.RecordError(f"{rec['_where']}: record {rec['id']!r}: token ids must be in [0, {vocab_size}), "
                              f"found {bad[0]}")
  return tokens


def _prompt_records(path, vocab_size: int) -> Iterator[dict]:
  """The prompts of a JSONL file, each noting its file:line in `_where`; integer ids become strings (so 1 and
  "1" are the same id), token prompts are checked here (before any work), text prompts once tokenized."""
  for line_no, rec in records.iter_jsonl(path):
    rid = rec.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool):
      rid = str(rid)
    rec = {**rec, "id": rid, "_where": f"{path}:{line_no}"}
    if "tokens" in rec:
      check_tokens(rec, rec["tokens"], vocab_size)
    yield rec


def _prompt_tokens(rec, tokenizer, vocab_size: int) -> list[int]:
  if "tokens" in rec:
    return rec["tokens"]
  for key in ("prompt", "text"):
    if key in rec:
      if tokenizer is None:
        raise records.RecordError(f"{rec['_where']}: record {rec['id']!r} has a string {key!r} but no tokenizer "
                                  "was given")
      if not isinstance(rec[key], str):
        raise records.RecordError(f"{rec['_where']}: record {rec['id']!r}: expected {key!r} to be a string, "
                                  f"found {type(rec[key]).__name__}")
      return check_tokens(rec, tokenizer.encode(rec[key], bos=True), vocab_size)
  raise records.RecordError(f"{rec['_where']}: record {rec['id']!r} has none of 'tokens', 'prompt', 'text'")


def generate_jsonl(sampler: Sampler, input_path, output_path, *, max_new_tokens: int | None = None,
                   sampling: Sampling | None = None, tokenizer=None, stop: Sequence = (),
                   eos_ids: Sequence[int] | None = None, seed: int | None = None, progress: bool = True,
                   share: Share = Share(), stop_after_chunks: int | None = None) -> dict[str, Any]:
  """Generates for every record of `input_path` into `output_path`, resuming a partial run; byte-identical
  however it was interrupted.

  Input records carry `id` (a string or an integer) and either `tokens` (token ids, used as given) or
  `prompt`/`text` (a string, tokenized with BOS). Output lines: {"id", "tokens", "logprobs", "finish_reason"
  [, "text"]}, in input order. A BulkJob with parts under `<output>.parts/`, chunks of the sample config's
  `bulk_chunk_records`, a row's key from its record id; once complete, the parts give way to
  `<output>.done`. The settings include the model's config but not its weights (hashing them would read the
  whole model): give each model its own output path. Under `jax.distributed`, pass `share` so each process
  generates its own chunks; the processes meet at a barrier and process 0 merges.

  Returns stats: records generated by this call, whether the output is complete, generated tokens, tokens/s,
  decode utilisation (useful decoded tokens / decoded slots), compilations. `stop_after_chunks` ends the
  run early (tests of resumption).
  """
  import jax
  from jax.experimental import multihost_utils

  cfg = sampler.config
  seed = cfg.sampling.seed if seed is None else seed
  vocab = sampler.cfg.vocab_size
  stop_strings = tuple(s for s in stop if isinstance(s, str))
  stop_sequences = tuple(tuple(s) for s in stop if not isinstance(s, str))
  # Everything an output line depends on besides its record.
  settings = json.dumps({"max_new_tokens": max_new_tokens, "sampling": None if sampling is None else
                         dataclasses.asdict(sampling), "stop": [list(x) if not isinstance(x, str) else x for x in stop],
                         "eos_ids": None if eos_ids is None else list(eos_ids), "seed": seed,
                         "tokenizer": None if tokenizer is None else type(tokenizer).__name__,
                         "sample_config": dataclasses.asdict(cfg), "model": sampler.cfg.fields_dict()},
                        sort_keys=True, default=str)
  job = BulkJob(lambda: _prompt_records(input_path, vocab), output_path, parts=f"{output_path}.parts",
                name="generate", share=share, chunk_records=cfg.bulk_chunk_records, settings=settings,
                keep_parts=False)
  stats0 = dict(sampler.stats)
  t0 = time.perf_counter()
  totals = {"records": 0, "tokens": 0}

  def fn(chunk: list[dict], prompts: list[list[int]]) -> list[dict]:
    seeds = plan.seed_pairs_from_ints([plan.seed_from_id(r["id"], seed) for r in chunk])
    completions = sampler.generate(prompts, max_new_tokens=max_new_tokens, sampling=sampling, seeds=seeds,
                                   stop_sequences=stop_sequences, stop_strings=stop_strings, eos_ids=eos_ids)
    out = []
    for r, c in zip(chunk, completions):
      line = {"id": r["id"], "tokens": c.tokens.tolist(), "logprobs": [float(x) for x in c.logprobs],
              "finish_reason": c.finish_reason}
      if tokenizer is not None:
        line["text"] = tokenizer.decode(c.tokens.tolist())
      out.append(line)
      totals["tokens"] += c.num_decoded
    totals["records"] += len(chunk)
    return out

  def postfix() -> dict[str, str]:
    return {"tok_s": f"{totals['tokens'] / max(time.perf_counter() - t0, 1e-9):.1f}"}

  # Under jax.distributed every process waits for every share, so process 0 sees it all and merges now.
  distributed = share.count > 1 and jax.process_count() == share.count
  result = job.run(fn, encode=lambda r: _prompt_tokens(r, tokenizer, vocab),
                   barrier=multihost_utils.sync_global_devices if distributed else None, desc="generate",
                   progress=progress, max_chunks=stop_after_chunks, postfix=postfix)
  elapsed = time.perf_counter() - t0
  delta = {k: v - stats0.get(k, 0) for k, v in sampler.stats.items()}
  return dict(records=totals["records"], complete=result.complete, generated_tokens=totals["tokens"],
              seconds=elapsed, tokens_per_s=totals["tokens"] / max(elapsed, 1e-9),
              utilisation=delta.get("useful_decode_tokens", 0) / max(delta.get("decode_slots", 0), 1),
              decode_steps=delta.get("decode_steps", 0), compilations=dict(sampler.compilations))

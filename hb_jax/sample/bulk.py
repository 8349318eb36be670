"""Bulk generation: a JSONL of prompts through the sampler, resumable, byte-identical however interrupted.

Input records carry `id` and either `tokens` (token ids, used as given) or `prompt`/`text` (a string,
tokenized with BOS). Output lines: {"id", "tokens", "logprobs", "finish_reason"[, "text"]}, JSON with
sorted keys.

Determinism: the input is cut into chunks of `bulk_chunk_records` records in input order, and each chunk is
planned and generated as a unit (length buckets, batches, refills: all a pure function of the chunk and the
config); a row's key comes from its record id. A chunk's lines are appended in one write and fsync'd to
`<output>.partial`. On resume, a torn last line is dropped, finished chunks are skipped, and a chunk that was
cut mid-write is regenerated whole (same plan, so the same lines) and only its missing lines appended. The
final file is written in input order to a temporary name and renamed into place.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Iterator, Sequence

import numpy as np

from hb_jax.sample import plan
from hb_jax.sample.sampler import Sampler
from hb_jax.sample.sampling import Sampling


class BulkError(ValueError):
  """An input record is malformed or the partial output does not belong to this input."""


def read_records(path) -> Iterator[dict[str, Any]]:
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise BulkError(f"{path}:{line_no}: not JSON ({e})") from e
      if "id" not in rec:
        raise BulkError(f"{path}:{line_no}: record has no 'id' (keys {sorted(rec)})")
      rec["_line"] = line_no
      yield rec


def _chunks(records: Iterator[dict], size: int) -> Iterator[list[dict]]:
  chunk = []
  for rec in records:
    chunk.append(rec)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def recover_partial(path) -> list[str]:
  """Complete lines of a partial output; a torn last line (no newline) is cut off the file."""
  if not os.path.exists(path):
    return []
  with open(path, "rb+") as f:
    data = f.read()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
      f.truncate(keep)
      f.flush()
      os.fsync(f.fileno())
  return data[:keep].decode("utf-8").splitlines(keepends=True)


def _line(rec_id, completion, tokenizer) -> str:
  out = {"id": rec_id, "tokens": completion.tokens.tolist(),
         "logprobs": [float(x) for x in completion.logprobs], "finish_reason": completion.finish_reason}
  if tokenizer is not None:
    out["text"] = tokenizer.decode(completion.tokens.tolist())
  return json.dumps(out, sort_keys=True, ensure_ascii=False) + "\n"


def _prompt_tokens(rec, tokenizer, where) -> list[int]:
  if "tokens" in rec:
    return [int(t) for t in rec["tokens"]]
  for key in ("prompt", "text"):
    if key in rec:
      if tokenizer is None:
        raise BulkError(f"{where}: record {rec['id']!r} has a string {key!r} but no tokenizer was given")
      return tokenizer.encode(rec[key], bos=True)
  raise BulkError(f"{where}: record {rec['id']!r} has none of 'tokens', 'prompt', 'text'")


def generate_jsonl(sampler: Sampler, input_path, output_path, *, max_new_tokens: int | None = None,
                   sampling: Sampling | None = None, tokenizer=None, stop: Sequence = (),
                   eos_ids: Sequence[int] | None = None, seed: int | None = None, progress: bool = True,
                   stop_after_chunks: int | None = None) -> dict[str, Any]:
  """Generates for every record of `input_path` into `output_path` (resuming a partial run).

  Returns stats: records, generated tokens, tokens/s, decode utilisation (useful decoded tokens / decoded
  slots), compilations. `stop_after_chunks` ends the run early (for tests of resumption).
  """
  cfg = sampler.config
  seed = cfg.seed if seed is None else seed
  partial = f"{output_path}.partial"
  done_ids = set()
  for line in recover_partial(partial):
    try:
      done_ids.add(json.loads(line)["id"])
    except (json.JSONDecodeError, KeyError) as e:
      raise BulkError(f"{partial}: unreadable line {line[:80]!r}; delete the file to start over") from e
  stop_strings = tuple(s for s in stop if isinstance(s, str))
  stop_sequences = tuple(tuple(s) for s in stop if not isinstance(s, str))
  stats0 = dict(sampler.stats)
  total = sum(1 for _ in read_records(input_path))
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=total, initial=len(done_ids), unit="rec", desc="generate", dynamic_ncols=True)
  t0, tokens_out, records_out, chunks_run = time.perf_counter(), 0, 0, 0
  seen: set = set()
  with open(partial, "a", encoding="utf-8") as out:
    for chunk in _chunks(read_records(input_path), cfg.bulk_chunk_records):
      for rec in chunk:
        if rec["id"] in seen:
          raise BulkError(f"{input_path}:{rec['_line']}: duplicate id {rec['id']!r}")
        seen.add(rec["id"])
      todo = [r for r in chunk if r["id"] not in done_ids]
      if not todo:
        continue
      if stop_after_chunks is not None and chunks_run >= stop_after_chunks:
        break
      prompts = [_prompt_tokens(r, tokenizer, f"{input_path}:{r['_line']}") for r in chunk]
      seeds = plan.seed_pairs_from_ints([plan.seed_from_id(str(r["id"]), seed) for r in chunk])
      results: list = [None] * len(chunk)
      for i, comp in sampler.stream(prompts, max_new_tokens=max_new_tokens, sampling=sampling, seeds=seeds,
                                    stop_sequences=stop_sequences, stop_strings=stop_strings, eos_ids=eos_ids):
        results[i] = comp
        tokens_out += comp.num_decoded
        if bar is not None and chunk[i]["id"] not in done_ids:
          bar.update(1)
          bar.set_postfix(tok_s=f"{tokens_out / max(time.perf_counter() - t0, 1e-9):.1f}")
      lines = [_line(r["id"], c, tokenizer) for r, c in zip(chunk, results) if r["id"] not in done_ids]
      out.write("".join(lines))
      out.flush()
      os.fsync(out.fileno())
      done_ids.update(r["id"] for r in todo)
      records_out += len(lines)
      chunks_run += 1
  if bar is not None:
    bar.close()
  complete = len(done_ids) == total and seen == done_ids
  if complete:
    _merge_in_input_order(input_path, partial, output_path)
  elapsed = time.perf_counter() - t0
  delta = {k: v - stats0.get(k, 0) for k, v in sampler.stats.items()}
  return dict(records=records_out, complete=complete, generated_tokens=tokens_out, seconds=elapsed,
              tokens_per_s=tokens_out / max(elapsed, 1e-9),
              utilisation=delta.get("useful_decode_tokens", 0) / max(delta.get("decode_slots", 0), 1),
              decode_steps=delta.get("decode_steps", 0), compilations=dict(sampler.compilations))


def _merge_in_input_order(input_path, partial, output_path) -> None:
  by_id = {}
  with open(partial, encoding="utf-8") as f:
    for line in f:
      by_id[json.loads(line)["id"]] = line
  tmp = f"{output_path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for rec in read_records(input_path):
      f.write(by_id[rec["id"]])
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, output_path)
  os.remove(partial)

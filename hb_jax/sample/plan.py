"""Batch planning: length and batch-size buckets, shared-prefix detection, per-record seeds.

Everything here is a pure function of the prompts and the config, so a bulk run that is interrupted and
resumed plans exactly the same batches (and so compiles and computes exactly the same programs).
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np


class PlanError(ValueError):
  """A prompt does not fit the configured buckets or the model."""


def pow2_ceil(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def bucket_length(n: int, buckets: Sequence[int], what: str = "prompt") -> int:
  """The smallest bucket >= n."""
  for b in buckets:
    if n <= b:
      return b
  raise PlanError(f"{what} of {n} tokens exceeds the largest length bucket {buckets[-1]} "
                  "(sample.length_buckets)")


def batch_buckets(max_batch: int, smallest: int = 1) -> tuple[int, ...]:
  """Powers of two from `smallest` to max_batch."""
  out, b = [], pow2_ceil(max(1, smallest))
  while b < max_batch:
    out.append(b)
    b *= 2
  return tuple(out) + (max_batch,)


def bucket_batch(n: int, max_batch: int, smallest: int = 1) -> int:
  for b in batch_buckets(max_batch, smallest):
    if n <= b:
      return b
  return max_batch


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
  """Length of the longest token prefix shared by every prompt."""
  if not prompts:
    return 0
  arrays = [np.asarray(p) for p in prompts]
  limit = min(len(a) for a in arrays)
  first = arrays[0][:limit]
  n = limit
  for a in arrays[1:]:
    diff = np.nonzero(a[:n] != first[:n])[0]
    if diff.size:
      n = int(diff[0])
  return n


def shared_prefix(prompts: Sequence[Sequence[int]], min_tokens: int) -> int:
  """Prefix length to prefill once for these prompts: the common prefix, leaving every prompt at least one
  token of its own (its last token's logits start decoding), or 0 if that is shorter than `min_tokens`."""
  if len(prompts) < 2:
    return 0
  n = min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1)
  return n if n >= min_tokens else 0


@dataclasses.dataclass(frozen=True)
class Group:
  """Prompts that share one program: the same prompt-length bucket (and prefix)."""
  length: int  # prompt bucket (tokens after the shared prefix)
  indices: tuple[int, ...]  # positions in the input, in the order rows are filled


def group_by_length(lengths: Sequence[int], buckets: Sequence[int]) -> list[Group]:
  """Groups prompt indices by length bucket, shortest bucket first, input order within a bucket."""
  by_bucket: dict[int, list[int]] = {}
  for i, n in enumerate(lengths):
    if n <= 0:
      raise PlanError(f"prompt {i} is empty after the shared prefix; every prompt needs a token")
    by_bucket.setdefault(bucket_length(n, buckets), []).append(i)
  return [Group(b, tuple(ix)) for b, ix in sorted(by_bucket.items())]


def seed_pairs_from_int(seed: int, n: int) -> np.ndarray:
  """uint32 [n, 2]: row i's key is fold_in(PRNGKey(seed), i)."""
  if not 0 <= int(seed) < 1 << 32:  # wrapping would give seed 2**32 the samples of seed 0
    raise PlanError(f"seed must be in [0, 2**32), found {seed}; for 64-bit seeds pass one per prompt")
  out = np.zeros((n, 2), np.uint32)
  out[:, 0] = np.uint32(seed & 0xFFFFFFFF)
  out[:, 1] = np.arange(n, dtype=np.uint32)
  return out


def seed_pairs_from_ints(seeds: Sequence[int]) -> np.ndarray:
  """uint32 [n, 2] from one 64-bit int per prompt: key = fold_in(PRNGKey(seed >> 32), seed & 0xffffffff)."""
  out = np.zeros((len(seeds), 2), np.uint32)
  for i, s in enumerate(seeds):
    s = int(s)
    if s < 0 or s >= 1 << 64:
      raise PlanError(f"seed {i} must be in [0, 2**64), found {s}")
    out[i] = (s >> 32, s & 0xFFFFFFFF)
  return out


def seed_from_id(record_id: str, base_seed: int = 0) -> int:
  """A 64-bit seed from a record id (and a run seed): a row's sample depends on nothing else."""
  digest = hashlib.sha256(f"{base_seed}\x00{record_id}".encode()).digest()
  return int.from_bytes(digest[:8], "big")

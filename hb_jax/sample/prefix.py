"""A shared prompt prefix (e.g. the ~450-token curation rubric), prefilled once and reused by every row.

The prefix's KV is computed once at batch 1 (hb_jax.sample.programs.prefill_prefix; segment 1 on its tokens,
0 on the padding slots, so padding is never attended) and passed to the model beside the rows' own cache:
every row attends to it (see hb_jax.model.llama), and the rows' own tokens take positions from the prefix
length on. Under the model's one masking rule (same segment, key position <= query position) this is exactly
the full prompt. This module plans it on the host: its length and its padded arrays.

The prefix is padded to a multiple of PREFIX_ALIGN slots, not to the prompt length buckets: it is one
program per prefix length class either way, and the padding slots are still read by every query.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from hb_jax.sample import plan


PREFIX_ALIGN = 64


def prefix_length(seqs: Sequence[Sequence[int]], prefix: int | str | None, min_tokens: int) -> int:
  """How many leading tokens to run once: 'auto' takes the sequences' common prefix when it is at least
  `min_tokens` long (each sequence keeps >= 1 token of its own); an int forces that length (checked);
  None or 0 turns reuse off."""
  if prefix == "auto":
    return plan.shared_prefix(seqs, min_tokens)
  n = int(prefix or 0)
  if n and (plan.common_prefix_length(seqs) < n or min(map(len, seqs)) <= n):
    raise ValueError(f"prefix={n}: every sequence must start with the same {n} tokens and have at least one more")
  return n


def padded_prefix(prefix: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """int32 [1, P] tokens, positions and segment ids of `prefix`, right-padded to a multiple of PREFIX_ALIGN."""
  n = len(prefix)
  slots = -(-n // PREFIX_ALIGN) * PREFIX_ALIGN
  tokens = np.zeros((1, slots), np.int32)
  tokens[0, :n] = prefix
  positions = np.zeros((1, slots), np.int32)
  positions[0, :n] = np.arange(n)
  segments = np.zeros((1, slots), np.int32)
  segments[0, :n] = 1
  return tokens, positions, segments


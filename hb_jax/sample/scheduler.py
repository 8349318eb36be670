"""The host side of generation and scoring: which sequences go on which device rows, and when; numpy only.

The device programs (hb_jax.sample.programs) compute; this module decides what they compute next, for the
Sampler and the Scorer alike:

  check_token_ids  token-id lists -> int32 arrays, checked against the vocabulary
  pack_rows        sequences -> padded [batch, length] tokens / positions / segment ids (left-padded prompts
                   for generation, right-padded rows for scoring), positions continuing after a shared prefix
  batches          the scorer's queue: fixed batches per length bucket, input order within
  RowScheduler     the sampler's queue over one length bucket ("continuous batching"): refills of freed rows,
                   how far each decode call may run, which rows to read back and release, the tail compaction
  StopRules        a finished row's Completion: EOS and token stop sequences removed, stop strings cut
  PageTable        a paged KV cache's pages: handed to rows as they grow, taken back when they finish

The sampler's loop per length bucket:
  fill all rows (one prefill) -> decode until `refill_min` rows finish (or `chunk_steps`) -> hand out the
  finished rows -> prefill queued prompts straight into the freed rows -> decode again ...
and once the queue is empty, whenever at most half the rows are live they are gathered into the next smaller
batch bucket, so the tail of long outputs does not decode mostly empty rows. Every decision is a function of
the prompts, the config and the rows' finish states, so a given batch plan always runs the same programs on
the same rows.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Iterator, Sequence

import numpy as np

from hb_jax.sample import plan
from hb_jax.sample.programs import FINISH_EOS, FINISH_LENGTH, FINISH_RELEASED, FINISH_STOP, RUNNING

_REASONS = {FINISH_EOS: "eos", FINISH_LENGTH: "length", FINISH_STOP: "stop", FINISH_RELEASED: "stop"}


def check_token_ids(seqs: Sequence[Sequence[int]], vocab_size: int, what: str) -> list[np.ndarray]:
  """int32 arrays of `seqs`; an id outside [0, vocab_size) is an error naming `what` and its index."""
  out = []
  for i, s in enumerate(seqs):
    a = np.asarray(s, np.int64).reshape(-1)
    if a.size and (a.min() < 0 or a.max() >= vocab_size):
      raise ValueError(f"{what} {i}: token ids must be in [0, {vocab_size}), found [{a.min()}, {a.max()}]")
    out.append(a.astype(np.int32))
  return out


def pack_rows(seqs: Sequence[np.ndarray], batch: int, length: int, start: int, *, left_pad: bool
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """int32 [batch, length] tokens, positions and segment ids with seqs[j] on row j (rows past len(seqs) empty).

  left_pad: each sequence ends at slot length-1 (generation: every prompt's next token is read at the same
  slot); else it starts at slot 0 (scoring). Positions count from `start` (the shared prefix's length) along
  the sequence. Padding slots hold token 0 and segment 0, so they are never attended; their positions are 0
  before a sequence and continue it after one."""
  tokens = np.zeros((batch, length), np.int32)
  segments = np.zeros((batch, length), np.int32)
  if left_pad:
    positions = np.zeros((batch, length), np.int32)
  else:
    positions = np.broadcast_to(start + np.arange(length, dtype=np.int32), (batch, length)).copy()
  for j, s in enumerate(seqs):
    cols = slice(length - len(s), length) if left_pad else slice(0, len(s))
    tokens[j, cols] = s
    positions[j, cols] = start + np.arange(len(s))
    segments[j, cols] = 1
  return tokens, positions, segments


def batches(lengths: Sequence[int], buckets: Sequence[int], max_batch: int
            ) -> Iterator[tuple[int, int, list[int]]]:
  """(bucket length, batch size, indices): grouped by length bucket, input order within, max_batch rows at a
  time, each batch padded to a power of two."""
  for group in plan.group_by_length(lengths, buckets):
    ix = list(group.indices)
    for start in range(0, len(ix), max_batch):
      chunk = ix[start:start + max_batch]
      yield group.length, plan.bucket_batch(len(chunk), max_batch), chunk


@dataclasses.dataclass
class Completion:
  tokens: np.ndarray  # int32: new tokens, EOS and stop sequences excluded
  logprobs: np.ndarray  # float32: log p(token | context) under the model, one per token
  finish_reason: str  # eos | length | stop
  num_decoded: int = -1  # tokens the row decoded for this result, EOS included (for utilisation)


@dataclasses.dataclass(frozen=True)
class StopRules:
  """How a row's output ends on the host side: token stop sequences (the device found them; removed here) and
  stop strings (found here in the detokenized text, which the device cannot see)."""
  sequences: tuple[tuple[int, ...], ...] = ()
  strings: tuple[str, ...] = ()
  detokenize: Callable[[Sequence[int]], str] | None = None

  def completion(self, toks, lps, code: int) -> Completion | None:
    """The Completion of a row with outputs (toks, lps) and FINISH_* `code`; for a RUNNING row, one only
    if a stop string has appeared (else None: the row decodes on)."""
    toks, lps = np.asarray(toks, np.int32), np.asarray(lps, np.float32)
    reason = _REASONS.get(code)
    if code == FINISH_EOS:
      toks, lps = toks[:-1], lps[:-1]
    elif code == FINISH_STOP:
      # The longest sequence that ends the output (of [5] and [4, 5], [4, 5]), whatever the listed order.
      for seq in sorted(self.sequences, key=len, reverse=True):
        if len(toks) >= len(seq) and tuple(toks[len(toks) - len(seq):]) == seq:
          toks, lps = toks[:len(toks) - len(seq)], lps[:len(lps) - len(seq)]
          break
    if self.strings:
      cut = self._string_cut(toks)
      if cut is not None:
        return Completion(toks[:cut], lps[:cut], "stop", cut)
    if code == RUNNING:
      return None
    return Completion(toks, lps, reason, len(toks) + (1 if code == FINISH_EOS else 0))

  def _string_cut(self, toks: np.ndarray) -> int | None:
    """Smallest i such that detokenize(toks[:i]) contains a stop string, or None."""
    hit = lambda i: any(s in self.detokenize(toks[:i].tolist()) for s in self.strings)
    if not len(toks) or not hit(len(toks)):
      return None
    lo, hi = 1, len(toks)
    while lo < hi:
      mid = (lo + hi) // 2
      if hit(mid):
        hi = mid
      else:
        lo = mid + 1
    return lo


@dataclasses.dataclass
class Refill:
  """Queued requests for freed rows: requests[j] goes to device row rows[j]; rows past len(requests) hold
  the batch size (an out-of-range row, dropped on the device), padding R to a batch bucket."""
  requests: list[int]
  rows: np.ndarray  # int32 [R]


class RowScheduler:
  """Continuous batching of one length bucket's requests over `batch` device rows.

  Holds which request each row serves (`row_req`, -1 for a free row), the queue, and the rows a stop string
  ended on the host, which the device must release at its next decode call. The caller runs the programs
  and reports the rows' finish states back; every answer here depends only on those and the queue.
  """

  def __init__(self, requests: Sequence[int], max_batch: int, refill_min: int, *, compact: bool = True):
    self.batch = plan.bucket_batch(len(requests), max_batch)
    self.compact = compact
    self.refill_floor = min(refill_min, self.batch)
    self.queue = collections.deque(requests)
    self.row_req = np.full(self.batch, -1)
    self.release = np.zeros(self.batch, bool)

  @property
  def busy(self) -> bool:
    """Some row still serves a request."""
    return bool((self.row_req >= 0).any())

  def next_refill(self) -> Refill | None:
    """As many queued requests as there are free rows (None if either is empty); the rows are then taken.
    R, the refill's batch, is a power of two of at least `refill_min`, so refills share few programs."""
    free = np.nonzero(self.row_req < 0)[0]
    take = min(len(free), len(self.queue))
    if take == 0:
      return None
    reqs = [self.queue.popleft() for _ in range(take)]
    rows = np.full(plan.bucket_batch(take, self.batch, self.refill_floor), self.batch, np.int32)
    rows[:take] = free[:take]
    self.row_req[free[:take]] = reqs
    self.release[free[:take]] = False
    return Refill(reqs, rows)

  def decode_target(self, done: np.ndarray) -> int | None:
    """How many more rows the next decode call may see finish before it returns, or None not to decode now
    (a finished row waits to be read, or no row runs). With a queue: enough rows to refill; without one:
    enough that at most half the batch stays live, so the tail moves to a smaller batch."""
    occupied = self.row_req >= 0
    running = occupied & ~done
    if not running.any() or (done & occupied).any():
      return None
    if self.queue:
      return min(self.refill_floor, len(self.queue))
    return max(1, int(running.sum()) - self.batch // 2)

  def take_release(self) -> np.ndarray:
    """bool [batch]: the rows the next decode call must mark finished (then forgotten here)."""
    out = self.release.copy()
    self.release[:] = False
    return out

  def rows_to_read(self, done: np.ndarray, stop_strings: bool) -> np.ndarray:
    """Rows whose outputs the host must read: the finished ones, and with stop strings every live one too."""
    occupied = self.row_req >= 0
    if stop_strings and (occupied & ~done).any():
      return np.nonzero(occupied)[0]
    return np.nonzero(occupied & done)[0]

  def hand_out(self, row: int, still_running: bool) -> int:
    """Frees `row` and returns its request; a row still running on the device (a stop string ended it) is
    released there at the next decode call."""
    if still_running:
      self.release[row] = True
    req = int(self.row_req[row])
    self.row_req[row] = -1
    return req

  def compaction(self) -> tuple[np.ndarray, np.ndarray] | None:
    """Once the queue is dry and at most half the rows are live: (rows to gather, keep) for the smallest batch
    bucket that holds the live rows, with this table moved to that batch (None: stay)."""
    if self.queue or self.batch == 1 or not self.compact:
      return None
    live = np.nonzero(self.row_req >= 0)[0]
    small = plan.bucket_batch(len(live), self.batch)
    if not len(live) or small > self.batch // 2:
      return None
    sel = np.concatenate([live, np.nonzero(self.row_req < 0)[0][:small - len(live)]])
    keep = np.arange(small) < len(live)
    self.row_req, self.release, self.batch = np.where(keep, self.row_req[sel], -1), self.release[sel] & keep, small
    return sel, keep


class PageTable:
  """Which pages of a paged KV cache's pool (hb_jax.model.kv_cache.PagedKVCache) each device row holds.

  A row gets pages as it grows (`grow`: its prompt at a refill, then enough for the next decode call) and
  gives them all back when it is handed out (`release`), so a refill reuses them with no copy. The pool holds
  every row's worst case (batch x pages_per_row), so a row never waits for a page. With the rows split over
  `shards` batch shards of a mesh, each shard's rows take pages from that shard's share of the pool, which
  the device's per-shard kernels (ragged_paged_attention) read by their ids within the share; such rows
  never move to another shard (the scheduler does not compact them). The out-of-range id num_pages marks
  "no page": the device drops writes to it.
  """

  def __init__(self, batch: int, slots: int, page_size: int, shards: int = 1):
    if batch % shards:
      raise ValueError(f"PageTable: {batch} rows do not split over {shards} shards")
    self.page_size = page_size
    self.per_row = -(-slots // page_size)
    self.num_pages = batch * self.per_row
    self.rows_per_shard = batch // shards
    share = self.num_pages // shards
    self.free = [collections.deque(range(s * share, (s + 1) * share)) for s in range(shards)]
    self.table = np.full((batch, self.per_row), self.num_pages, np.int32)
    self.held = np.zeros(batch, np.int64)

  def grow(self, row: int, slots: int) -> None:
    """Row `row` holds pages for its first `slots` slots (at most pages_per_row)."""
    need = min(-(-slots // self.page_size), self.per_row)
    free = self.free[row // self.rows_per_shard]
    while self.held[row] < need:
      self.table[row, self.held[row]] = free.popleft()
      self.held[row] += 1

  def release(self, row: int) -> None:
    free = self.free[row // self.rows_per_shard]
    free.extend(int(p) for p in self.table[row, :self.held[row]])
    self.table[row] = self.num_pages
    self.held[row] = 0

  def rows(self, rows: np.ndarray) -> np.ndarray:
    """The table's rows `rows` (an out-of-range row, a refill's padding, gets no pages)."""
    out = np.full((len(rows), self.per_row), self.num_pages, np.int32)
    real = rows < len(self.table)
    out[real] = self.table[rows[real]]
    return out

  def compacted(self, sel: np.ndarray, keep: np.ndarray) -> None:
    """The table after RowScheduler.compaction: rows `sel` in order, kept ones with their pages (one shard)."""
    if len(self.free) != 1:
      raise ValueError("PageTable: rows split over shards are not compacted")
    self.table, self.held = self.table[sel], np.where(keep, self.held[sel], 0)
    self.table[~keep] = self.num_pages
    self.rows_per_shard = len(sel)

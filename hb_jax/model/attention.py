"""Attention: one interface, several implementations (`model.attention`).

Every implementation computes, per query head (heads = kv_heads x groups; a group shares its K/V),

    out = softmax(q . K^T + mask) . V,

with one mask rule for training, packing, left padding and the KV cache: a query sees a key iff they share a
segment id and the key's position is not after the query's (segment id 0 marks padding). `q` arrives scaled
by 1/sqrt(head_dim) and grouped, [B, T, kv_heads, groups, head_dim]; keys and values are laid out as the
cache is, [B, kv_heads, S, head_dim].

  xla      the reference: one einsum into float32 [B, K, G, T, S] scores, a masked softmax, one einsum out.
           The backward keeps the T x S scores.
  chunked  the same math blockwise in plain JAX (FlashAttention's online softmax over key blocks), with a
           custom VJP that recomputes each block's probabilities from the saved log-sum-exp: neither pass
           keeps more than one [B, K, G, block_q, block_kv] block of scores. Portable (any backend).
  splash   TPU's Pallas splash-attention kernel (causal + segment ids, GQA) per device under shard_map, and
           in interpret mode off TPU (tests). It masks by index, so it applies where index order is
           position order within every segment: rows without a KV cache (training, packed or left-padded).
  cudnn    jax.nn.dot_product_attention(implementation="cudnn") on GPUs with the rule as a dense mask.
  ragged   (not a choice: what `chunked` runs over a KV cache, and `auto` off CPU) the online softmax over
           key blocks in a loop that stops at the batch's longest live row (`Source.live`), so a decode step
           reads the slots rows have filled, not the whole allocated cache. Forward only (inference). Over a
           paged cache (`PagedSource`) its blocks are the rows' pages, gathered through the page table.
  paged_tpu  (not a choice: `auto` on TPU over a paged cache, where hb_jax.model.ragged_tpu.shape_problem
           allows) ragged_paged_attention, which reads the live pages in place.

A shared prefix (one batch-less K/V every row attends before its own keys, e.g. the curation rubric) is a
second source: each source gives (out, lse), and the two merge exactly,

    out = (e^(lse_a - m) out_a + e^(lse_b - m) out_b) / (e^(lse_a - m) + e^(lse_b - m)),  m = max(lse_a, lse_b),

so no implementation copies the prefix per row. `xla` keeps its own one-softmax form of the same sum.

`resolve` turns `auto` (or a choice that cannot apply to a call) into the implementation that runs and says
why once per distinct reason; the choice is a runtime setting, never part of a model folder.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from hb_jax.config import ATTENTION_IMPLEMENTATIONS
from hb_jax.parallel import TRAIN_RULES, batch_shards, logical_to_spec, target_platform

Array = jax.Array

IMPLEMENTATIONS = ATTENTION_IMPLEMENTATIONS  # auto, xla, chunked, splash, cudnn (ModelConfig.attention)
NEG = float(jnp.finfo(jnp.float32).min)  # the masked score: exp(NEG - any real max) is exactly 0
# `auto` keeps xla's one-shot scores while one layer's [B, K, G, T, S] float32 block stays under this many
# bytes (short rows); above it the blockwise path bounds memory.
AUTO_CHUNKED_SCORE_BYTES = 256 * 2**20
# The key block of the ragged cache read: a cache of at most one block is read whole (xla's one einsum);
# a longer one a block at a time, up to the longest live row.
RAGGED_BLOCK = 512
SPLASH_BLOCK = 128  # splash's sequence blocks are multiples of 128 (the TPU lane width)

_log = logging.getLogger(__name__)
_said: set[str] = set()


class Source(NamedTuple):
  """One key/value source: k, v [B, K, S, H] (or [K, S, H] shared by every row), positions and segment ids
  [B, S] (or [S]), and for a KV cache `live` [B]: row b's slots at and past live[b] are all empty (its write
  index), so a ragged read may stop there."""
  k: Array
  v: Array
  pos: Array
  seg: Array
  live: Array | None = None

  @property
  def shared(self) -> bool:
    return self.k.ndim == 3


class PagedSource(NamedTuple):
  """A paged KV cache as a source (hb_jax.model.kv_cache.PagedKVCache): one layer's page pool [pages,
  page_size, 2K, H] (K of head h at 2h, V at 2h + 1), the page table [B, pages_per_row], positions and segment ids per logical slot [B, S],
  and the live lengths [B]."""
  pages: Array
  page_table: Array
  pos: Array
  seg: Array
  live: Array

  @property
  def page_size(self) -> int:
    return self.pages.shape[1]


def _say_once(message: str) -> None:
  if message not in _said:
    _said.add(message)
    _log.info("attention: %s", message)


def resolve(choice: str, *, q_shape, kv_len: int, cached: bool, dtype, backend: str | None = None,
            page_size: int = 0, prefix: bool = False) -> str:
  """The implementation a call runs: `choice` if it applies to this call, else the portable one, said once.

  `auto` picks by backend and shape: over a paged cache (page_size > 0), TPU's ragged_paged_attention where
  it applies, else the page-by-page read; over a contiguous KV cache longer than one RAGGED_BLOCK, the ragged
  read (not on CPU, where it is slower unless the scores are large); for rows without a cache, splash on
  TPU, cudnn on GPU where its constraints hold, and elsewhere xla while one layer's scores are small (short
  rows), chunked above.
  """
  if choice not in IMPLEMENTATIONS:
    raise ValueError(f"model.attention: expected one of {IMPLEMENTATIONS}, found {choice!r}")
  backend = backend or target_platform()
  if page_size:
    impl = _resolve_paged(choice, q_shape, dtype, backend, page_size, prefix)
  else:
    impl = _resolve(choice, q_shape, kv_len, cached, dtype, backend)
  kind = "paged-cache" if page_size else "cached" if cached else "uncached"
  _say_once(f"model.attention={choice} runs {impl} for {kind} calls on {backend}")
  return impl


def _resolve_paged(choice, q_shape, dtype, backend, page_size, prefix) -> str:
  """A decode step over a paged cache: `xla` gathers every page (the reference); on TPU the ragged paged
  kernel where its limits hold and no shared prefix needs merging (it returns no log-sum-exp); else the
  portable page-by-page read."""
  from hb_jax.model import ragged_tpu

  if choice == "xla":
    return "xla"
  if backend == "tpu" and choice in ("auto", "splash"):
    b, t, k, g, h = q_shape
    problem = "one query per row only" if t != 1 else "a shared prefix to merge" if prefix else \
        ragged_tpu.shape_problem(k * g, k, h, page_size, dtype)
    if problem is None:
      return "paged_tpu"
    _say_once(f"ragged_paged_attention does not apply ({problem}): the portable paged read")
  return "ragged"


def _resolve(choice, q_shape, kv_len, cached, dtype, backend) -> str:
  b, t, k, g, h = q_shape
  score_bytes = 4 * b * k * g * t * kv_len
  portable = "xla" if score_bytes <= AUTO_CHUNKED_SCORE_BYTES else "chunked"
  if cached and choice != "xla":
    # A cache holds empty slots past each row's live length; the blockwise read skips them. On CPU, XLA
    # copies every key block it slices (bench/run.py sample: slower than one einsum over the whole cache
    # from about a third live upwards), so there `auto` reads blocks only where the scores are too large.
    if choice in ("splash", "cudnn"):
      _say_once(f"{choice} has no KV-cache form here: the ragged read for cached calls")
    long_cache = kv_len > RAGGED_BLOCK and not (choice == "auto" and backend == "cpu")
    return "ragged" if long_cache or choice == "chunked" or portable == "chunked" else "xla"
  if choice == "auto":
    if backend == "tpu" and t >= SPLASH_BLOCK:
      return "splash"
    if backend == "gpu" and _cudnn_problem(q_shape, dtype) is None:
      return "cudnn"
    return portable
  if choice == "cudnn":
    problem = "it runs on GPUs only" if backend != "gpu" else _cudnn_problem(q_shape, dtype)
    if problem:
      _say_once(f"cudnn does not apply ({problem}): chunked instead")
      return "chunked"
  return choice


def _cudnn_problem(q_shape, dtype) -> str | None:
  h = q_shape[-1]
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"dtype {jnp.dtype(dtype).name}, cuDNN's flash attention takes bfloat16 or float16"
  if h > 128 or h % 8:
    return f"head_dim {h}, cuDNN's flash attention takes a multiple of 8 up to 128"
  return None


def attend(q: Array, q_pos: Array, q_seg: Array, own: "Source | PagedSource", prefix: Source | None = None, *,
           impl: str = "xla", block_q: int = 512, block_kv: int = 512) -> Array:
  """Attention of grouped, scaled queries q [B, T, K, G, H] (at positions / segment ids q_pos, q_seg [B, T])
  over the `own` source (a paged cache too) and a shared `prefix`: [B, T, K, G, H] in q's dtype. `impl` is an
  implementation that applies to the call (`resolve`); block sizes are chunked's."""
  if isinstance(own, PagedSource):
    if impl == "paged_tpu":
      return paged_tpu_attention(q, own)
    if impl == "xla":
      own = gathered(own, q.dtype)
  if impl == "xla":
    return xla_attention(q, q_pos, q_seg, own, prefix)
  if impl == "chunked":
    parts = [chunked_attention(q, q_pos, q_seg, own, block_q=block_q, block_kv=block_kv)]
  elif impl == "ragged":
    parts = [ragged_attention(q, q_pos, q_seg, own, block_q=block_q, block_kv=block_kv)]
  elif impl == "splash":
    parts = [splash_attention(q, q_seg, own, with_lse=prefix is not None)]
  elif impl == "cudnn":
    parts = [cudnn_attention(q, q_pos, q_seg, own, with_lse=prefix is not None)]
  else:
    raise ValueError(f"attend: expected one of {IMPLEMENTATIONS[1:]}, found {impl!r}")
  if prefix is None:
    return parts[0][0]
  # The prefix is a batch-1 source no kernel here takes without a copy per row: the blockwise path.
  parts.append(chunked_attention(q, q_pos, q_seg, prefix, block_q=block_q, block_kv=block_kv))
  return merge(parts).astype(q.dtype)


def merge(parts) -> Array:
  """One softmax over several sources from each source's (out [B, T, K, G, H], lse [B, K, G, T])."""
  lses = jnp.stack([lse for _, lse in parts])
  top = jax.lax.stop_gradient(lses.max(0))
  weights = jnp.exp(lses - top)  # [n, B, K, G, T]
  total = weights.sum(0)
  out = sum(o.astype(jnp.float32) * w.transpose(0, 3, 1, 2)[..., None] for (o, _), w in zip(parts, weights))
  return out / total.transpose(0, 3, 1, 2)[..., None]


def xla_attention(q: Array, q_pos: Array, q_seg: Array, own: Source, prefix: Source | None = None) -> Array:
  """The reference: scores for every (query, key) pair at once, one softmax over both sources."""
  dt = q.dtype
  b = q.shape[0]
  scores = _scores(q, own.k)
  scores = jnp.where(_mask(q_pos, q_seg, own.pos, own.seg)[:, None, None], scores, NEG)
  if prefix is None:
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    return _weighted(probs, own.v, dt)
  pre_scores = _scores(q, prefix.k)
  pre_pos = jnp.broadcast_to(prefix.pos, (b, prefix.pos.shape[-1]))
  pre_seg = jnp.broadcast_to(prefix.seg, (b, prefix.seg.shape[-1]))
  pre_scores = jnp.where(_mask(q_pos, q_seg, pre_pos, pre_seg)[:, None, None], pre_scores, NEG)
  top = jax.lax.stop_gradient(jnp.maximum(pre_scores.max(-1, keepdims=True), scores.max(-1, keepdims=True)))
  e_own, e_pre = jnp.exp(scores - top), jnp.exp(pre_scores - top)
  denom = e_own.sum(-1) + e_pre.sum(-1)  # [b, k, g, t]
  out = _weighted(e_own.astype(dt), own.v, jnp.float32) + _weighted(e_pre.astype(dt), prefix.v, jnp.float32)
  return (out / denom.transpose(0, 3, 1, 2)[..., None]).astype(dt)


def _scores(q: Array, k: Array) -> Array:
  """float32 [B, K, G, T, S] = q . k^T for k [B, K, S, H] or shared [K, S, H]."""
  eq = "btkgh,ksh->bkgts" if k.ndim == 3 else "btkgh,bksh->bkgts"
  return jnp.einsum(eq, q, k, preferred_element_type=jnp.float32)


def _weighted(p: Array, v: Array, out_dtype) -> Array:
  """[B, T, K, G, H] = p . v for p [B, K, G, T, S] and v [B, K, S, H] or shared [K, S, H]."""
  eq = "bkgts,ksh->btkgh" if v.ndim == 3 else "bkgts,bksh->btkgh"
  return jnp.einsum(eq, p, v, preferred_element_type=out_dtype)


def _mask(q_pos: Array, q_seg: Array, kv_pos: Array, kv_seg: Array) -> Array:
  """[B, T, S] boolean: same segment and key not after query (kv_* may be [S], shared by every row)."""
  if kv_pos.ndim == 1:
    kv_pos, kv_seg = kv_pos[None], kv_seg[None]
  return (q_seg[:, :, None] == kv_seg[:, None, :]) & (kv_pos[:, None, :] <= q_pos[:, :, None])


# ------------------------------------------------------------------------------------------------- chunked
def chunked_attention(q: Array, q_pos: Array, q_seg: Array, src: Source, *, block_q: int = 512,
                      block_kv: int = 512) -> tuple[Array, Array]:
  """Blockwise attention: (out [B, T, K, G, H] in q's dtype, lse [B, K, G, T] float32). Rows and keys are
  padded to whole blocks with segment ids that match nothing real, and the padding is cut off again."""
  t, s = q.shape[1], src.k.shape[-2]
  bq, bk = min(block_q, t), min(block_kv, s)
  qp = _pad(q, 1, bq, 0)
  q_pos, q_seg = _pad(q_pos, 1, bq, 0), _pad(q_seg, 1, bq, -1)
  k, v = _pad(src.k, -2, bk, 0), _pad(src.v, -2, bk, 0)
  kv_pos, kv_seg = _pad(src.pos, -1, bk, 0), _pad(src.seg, -1, bk, -2)
  out, lse = _flash(qp, q_pos, q_seg, k, v, kv_pos, kv_seg, bq, bk)
  return out[:, :t], lse[..., :t]


def _pad(x: Array, axis: int, multiple: int, value) -> Array:
  extra = -x.shape[axis] % multiple
  if not extra:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def _q_blocks(x: Array, bq: int) -> Array:
  """[B, T, ...] -> [T / bq, B, bq, ...]."""
  b, t = x.shape[:2]
  return jnp.moveaxis(x.reshape(b, t // bq, bq, *x.shape[2:]), 1, 0)


def _q_unblock(x: Array) -> Array:
  """[n, B, bq, ...] -> [B, n * bq, ...]."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape(x.shape[0], -1, *x.shape[3:])


def _stat_blocks(x: Array, bq: int) -> Array:
  """[B, K, G, T] -> [T / bq, B, K, G, bq]."""
  return jnp.moveaxis(x.reshape(*x.shape[:3], x.shape[3] // bq, bq), 3, 0)


def _kv_blocks(x: Array, bk: int, seq_axis: int) -> Array:
  """Cut the sequence axis of a key/value ([B, K, S, H] or [K, S, H]) or position ([B, S] or [S]) array into
  blocks, leading: [S / bk, ..., bk, ...]."""
  n = x.shape[seq_axis] // bk
  shape = x.shape[:seq_axis] + (n, bk) + x.shape[seq_axis:][1:]
  return jnp.moveaxis(x.reshape(shape), seq_axis, 0)


def _kv_unblock(x: Array, seq_axis: int) -> Array:
  x = jnp.moveaxis(x, 0, seq_axis)
  return x.reshape(*x.shape[:seq_axis], -1, *x.shape[seq_axis + 2:])


def _block_scores(qi: Array, kj: Array, qpi: Array, qsi: Array, kpj: Array, ksj: Array) -> Array:
  """Masked float32 scores [B, K, G, bq, bk] of one query block against one key block."""
  eq = "bqkgh,ksh->bkgqs" if kj.ndim == 3 else "bqkgh,bksh->bkgqs"
  s = jnp.einsum(eq, qi, kj, preferred_element_type=jnp.float32)
  return jnp.where(_mask(qpi, qsi, kpj, ksj)[:, None, None], s, NEG)


def _blocks(q, q_pos, q_seg, k, v, kv_pos, kv_seg, bq, bk):
  seq = k.ndim - 2  # the sequence axis of k/v: 2 for [B, K, S, H], 1 for shared [K, S, H]
  qs = (_q_blocks(q, bq), _q_blocks(q_pos, bq), _q_blocks(q_seg, bq))
  kvs = (_kv_blocks(k, bk, seq), _kv_blocks(v, bk, seq), _kv_blocks(kv_pos, bk, kv_pos.ndim - 1),
         _kv_blocks(kv_seg, bk, kv_seg.ndim - 1))
  return qs, kvs, seq


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _flash(q, q_pos, q_seg, k, v, kv_pos, kv_seg, bq, bk):
  return _flash_forward(q, q_pos, q_seg, k, v, kv_pos, kv_seg, bq, bk)


def _flash_forward(q, q_pos, q_seg, k, v, kv_pos, kv_seg, bq, bk):
  """Per query block, the online softmax over key blocks: running max m, normaliser l, weighted sum acc."""
  dt = q.dtype
  (qb, qpb, qsb), kvs, _ = _blocks(q, q_pos, q_seg, k, v, kv_pos, kv_seg, bq, bk)

  def query_block(xs):
    qi, qpi, qsi = xs
    b, _, kh, g, h = qi.shape
    stat = jnp.full((b, kh, g, bq), NEG, jnp.float32)

    def key_block(carry, ys):
      m, l, acc = carry
      kj, vj, kpj, ksj = ys
      s = _block_scores(qi, kj, qpi, qsi, kpj, ksj)
      m_new = jnp.maximum(m, s.max(-1))
      rescale = jnp.exp(m - m_new)
      p = jnp.exp(s - m_new[..., None])
      eq = "bkgqs,ksh->bkgqh" if vj.ndim == 3 else "bkgqs,bksh->bkgqh"
      acc = acc * rescale[..., None] + jnp.einsum(eq, p.astype(dt), vj, preferred_element_type=jnp.float32)
      return (m_new, l * rescale + p.sum(-1), acc), None

    init = (stat, jnp.zeros_like(stat), jnp.zeros((b, kh, g, bq, h), jnp.float32))
    (m, l, acc), _ = jax.lax.scan(key_block, init, kvs)
    return (acc / l[..., None]).transpose(0, 3, 1, 2, 4), m + jnp.log(l)  # [B, bq, K, G, H], [B, K, G, bq]

  outs, lses = jax.lax.map(query_block, (qb, qpb, qsb))
  lse = jnp.moveaxis(lses, 0, 3)  # [B, K, G, n, bq]
  return _q_unblock(outs).astype(dt), lse.reshape(*lse.shape[:3], -1)


def _flash_fwd_rule(q, q_pos, q_seg, k, v, kv_pos, kv_seg, bq, bk):
  out, lse = _flash_forward(q, q_pos, q_seg, k, v, kv_pos, kv_seg, bq, bk)
  return (out, lse), (q, q_pos, q_seg, k, v, kv_pos, kv_seg, out, lse)


def _flash_bwd_rule(bq, bk, res, cts):
  """FlashAttention's backward: per block, p = exp(s - lse) from the saved lse, ds = p (dp - D + dlse) with
  D = rowsum(dout * out); dq accumulates over key blocks, dk and dv over query blocks."""
  q, q_pos, q_seg, k, v, kv_pos, kv_seg, out, lse = res
  dout, dlse = cts
  dt = q.dtype
  (qb, qpb, qsb), kvs, seq = _blocks(q, q_pos, q_seg, k, v, kv_pos, kv_seg, bq, bk)
  d = jnp.einsum("btkgh,btkgh->bkgt", dout.astype(jnp.float32), out.astype(jnp.float32))
  row_terms = (_q_blocks(dout.astype(dt), bq), _stat_blocks(d, bq), _stat_blocks(lse, bq), _stat_blocks(dlse, bq))
  shared = k.ndim == 3
  to_kv = "bkgqs,bqkgh->ksh" if shared else "bkgqs,bqkgh->bksh"

  def query_block(carry, xs):
    dk_acc, dv_acc = carry
    qi, qpi, qsi, doi, di, lsei, dlsei = xs

    def key_block(dqi, ys):
      kj, vj, kpj, ksj = ys
      p = jnp.exp(_block_scores(qi, kj, qpi, qsi, kpj, ksj) - lsei[..., None])
      eq = "bqkgh,ksh->bkgqs" if shared else "bqkgh,bksh->bkgqs"
      dp = jnp.einsum(eq, doi, vj, preferred_element_type=jnp.float32)
      ds = (p * (dp - di[..., None] + dlsei[..., None])).astype(dt)
      eq = "bkgqs,ksh->bqkgh" if shared else "bkgqs,bksh->bqkgh"
      dqi = dqi + jnp.einsum(eq, ds, kj, preferred_element_type=jnp.float32)
      dkj = jnp.einsum(to_kv, ds, qi, preferred_element_type=jnp.float32)
      dvj = jnp.einsum(to_kv, p.astype(dt), doi, preferred_element_type=jnp.float32)
      return dqi, (dkj, dvj)

    dqi, (dks, dvs) = jax.lax.scan(key_block, jnp.zeros(qi.shape, jnp.float32), kvs)
    return (dk_acc + dks, dv_acc + dvs), dqi

  zeros = (jnp.zeros(kvs[0].shape, jnp.float32), jnp.zeros(kvs[1].shape, jnp.float32))
  (dk, dv), dqs = jax.lax.scan(query_block, zeros, (qb, qpb, qsb) + row_terms)
  dq = _q_unblock(dqs).astype(q.dtype)
  dk, dv = _kv_unblock(dk, seq).astype(k.dtype), _kv_unblock(dv, seq).astype(v.dtype)
  return dq, None, None, dk, dv, None, None


_flash.defvjp(_flash_fwd_rule, _flash_bwd_rule)


# -------------------------------------------------------------------------------------------------- ragged
def ragged_attention(q: Array, q_pos: Array, q_seg: Array, src: "Source | PagedSource", *, block_q: int = 512,
                     block_kv: int = RAGGED_BLOCK) -> tuple[Array, Array]:
  """Attention over a KV cache read a key block at a time, up to the block holding the batch's longest live
  row (src.live): (out [B, T, K, G, H] in q's dtype, lse [B, K, G, T] float32). Forward only.

  The loop's trip count is the only thing the batch decides: a row's blocks past its own live length hold
  nothing it may see, and a fully masked block is an exact no-op of the online softmax (p = exp(NEG - m) = 0,
  rescale = exp(0) = 1), so a row's result does not depend on its batch-mates. A contiguous cache is never
  padded (that would copy it every step): when the block does not divide S the last block starts at
  S - block, and the slots an earlier block already read are masked out of it. A paged cache's blocks are
  its pages, gathered through the page table. A long prefill's queries go block_q at a time, so no more than
  one [B, K, G, block_q, block] block of scores exists.
  """
  if src.live is None or (isinstance(src, Source) and src.shared):
    raise ValueError("ragged attention: needs a per-row cache source with live lengths")
  t = q.shape[1]
  if t > block_q:
    qp = _pad(q, 1, block_q, 0)
    q_pos, q_seg = _pad(q_pos, 1, block_q, 0), _pad(q_seg, 1, block_q, -1)
    outs, lses = jax.lax.map(lambda xs: _ragged(*xs, src, block_kv),
                             (_q_blocks(qp, block_q), _q_blocks(q_pos, block_q), _q_blocks(q_seg, block_q)))
    lse = jnp.moveaxis(lses, 0, 3)
    return _q_unblock(outs)[:, :t], lse.reshape(*lse.shape[:3], -1)[..., :t]
  return _ragged(q, q_pos, q_seg, src, block_kv)


def _ragged(q: Array, q_pos: Array, q_seg: Array, src: "Source | PagedSource", block_kv: int
            ) -> tuple[Array, Array]:
  dt = q.dtype
  b, t, kh, g, h = q.shape
  s = src.pos.shape[1]
  bk = src.page_size if isinstance(src, PagedSource) else min(block_kv, s)
  n_blocks = jnp.maximum((jnp.max(src.live) + bk - 1) // bk, 1)
  slot = jnp.arange(bk, dtype=jnp.int32)

  def key_block(j, carry):
    m, l, acc = carry
    start = jnp.minimum(j * bk, s - bk)
    take = lambda x, axis: jax.lax.dynamic_slice_in_dim(x, start, bk, axis)
    unseen = (start + slot >= j * bk)[None]  # the clamped last block: slots before j * bk are counted
    kseg = jnp.where(unseen, take(src.seg, 1), -2)  # -2 matches no query's segment
    if isinstance(src, PagedSource):
      kv = jnp.take(src.pages, src.page_table[:, j], axis=0, mode="clip")  # [B, page, 2K, H]
      kv = kv.reshape(b, bk, kh, 2, h)
      kj, vj = kv[..., 0, :].transpose(0, 2, 1, 3), kv[..., 1, :].transpose(0, 2, 1, 3)
    else:
      kj, vj = take(src.k, 2), take(src.v, 2)
    s_blk = _block_scores(q, kj.astype(dt), q_pos, q_seg, take(src.pos, 1), kseg)
    m_new = jnp.maximum(m, s_blk.max(-1))
    rescale = jnp.exp(m - m_new)
    p = jnp.exp(s_blk - m_new[..., None])
    acc = acc * rescale[..., None] + jnp.einsum("bkgqs,bksh->bkgqh", p.astype(dt), vj.astype(dt),
                                                preferred_element_type=jnp.float32)
    return m_new, l * rescale + p.sum(-1), acc

  stat = jnp.full((b, kh, g, t), NEG, jnp.float32)
  m, l, acc = jax.lax.fori_loop(0, n_blocks, key_block,
                                (stat, jnp.zeros_like(stat), jnp.zeros((b, kh, g, t, h), jnp.float32)))
  return (acc / l[..., None]).transpose(0, 3, 1, 2, 4).astype(dt), m + jnp.log(l)


def gathered(src: PagedSource, dtype) -> Source:
  """The paged cache as a contiguous one ([B, K, slots, H], every page of every row copied): `xla`'s read."""
  kv = jnp.take(src.pages, src.page_table, axis=0, mode="clip")  # [B, n, page, 2K, H]
  b, n, ps, kh2, h = kv.shape
  kv = kv.reshape(b, n * ps, kh2 // 2, 2, h).transpose(3, 0, 2, 1, 4).astype(dtype)
  return Source(kv[0], kv[1], src.pos, src.seg, src.live)


def paged_tpu_attention(q: Array, src: PagedSource) -> Array:
  """ragged_paged_attention (hb_jax.model.ragged_tpu) for one new token per row: [B, 1, K, G, H]. The table
  holds global page ids; under a batch-sharded mesh each shard's rows hold pages of its own share of the pool
  (PageTable), which the kernel reads by their ids within that share."""
  from hb_jax.model import ragged_tpu

  b, t, kh, g, h = q.shape
  num_pages = src.pages.shape[0]
  mesh = jax.sharding.get_abstract_mesh()
  shards = 1 if mesh.empty else batch_shards(b, dict(zip(mesh.axis_names, mesh.axis_sizes)))
  local = src.page_table - (jnp.arange(b, dtype=jnp.int32) // (b // shards))[:, None] * (num_pages // shards)
  out = ragged_tpu.decode_attention(q.reshape(b, kh * g, h), src.pages.astype(q.dtype), src.live, local)
  return out.reshape(b, 1, kh, g, h)


# -------------------------------------------------------------------------------------------------- splash
def splash_attention(q: Array, q_seg: Array, src: Source, *, with_lse: bool = False, interpret: bool | None = None):
  """Splash attention over a row's own keys (src.k/v [B, K, T, H], the rows' own tokens): causal by index
  and by segment id. Returns (out [B, T, K, G, H], lse [B, K, G, T] or None). Under a mesh the kernel runs
  per device in shard_map (rows over the batch axes, heads over 'tensor' where both head counts divide);
  off TPU in Pallas interpret mode."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  from jax.sharding import PartitionSpec as P

  b, t, kh, g, h = q.shape
  if src.shared or src.k.shape[2] != t:
    raise ValueError("splash attention: keys must be the rows' own tokens (no cache, no shared source)")
  if interpret is None:
    interpret = target_platform() != "tpu"
  tp = t + (-t % SPLASH_BLOCK)
  # Padding rows get a segment of their own: they attend to themselves, never to a real token (splash
  # needs every row to see at least one key).
  qh = _pad(q.reshape(b, t, kh * g, h).transpose(0, 2, 1, 3), 2, SPLASH_BLOCK, 0)  # [B, N, T, H]
  k, v = _pad(src.k, 2, SPLASH_BLOCK, 0), _pad(src.v, 2, SPLASH_BLOCK, 0)
  q_seg, kv_seg = _pad(q_seg, 1, SPLASH_BLOCK, -1), _pad(src.seg, 1, SPLASH_BLOCK, -1)
  block = next(x for x in (512, 256, 128) if tp % x == 0)
  sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)

  def per_device(qh, k, v, q_seg, kv_seg):
    mask = sa.MultiHeadMask([sa.CausalMask((tp, tp))] * qh.shape[1])
    kernel = sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                save_residuals=with_lse, interpret=interpret)
    return jax.vmap(lambda *a: kernel(*a[:3], segment_ids=sa.SegmentIds(a[3], a[4])))(qh, k, v, q_seg, kv_seg)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or math.prod(mesh.axis_sizes) == 1:
    res = per_device(qh, k, v, q_seg, kv_seg)
  else:
    sizes_by_axis = dict(zip(mesh.axis_names, mesh.axis_sizes))
    q_spec = logical_to_spec(("batch", "act_heads", None, None), qh.shape, TRAIN_RULES, sizes_by_axis)
    kv_spec = logical_to_spec(("batch", "act_kv_heads", None, None), k.shape, TRAIN_RULES, sizes_by_axis)
    if q_spec[1] != kv_spec[1]:  # KV heads the tensor axis does not divide: heads stay whole per device
      _say_once(f"splash: {k.shape[1]} KV heads do not split like {qh.shape[1]} query heads; heads unsplit")
      q_spec, kv_spec = P(q_spec[0], None, None, None), P(kv_spec[0], None, None, None)
    row = P(q_spec[0], None)
    lse_spec = P(q_spec[0], q_spec[1], None)
    res = jax.shard_map(per_device, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, row, row),
                        out_specs=(q_spec, (lse_spec,)) if with_lse else q_spec, check_vma=False)(
                            qh, k, v, q_seg, kv_seg)
  out, lse = (res[0], res[1][0]) if with_lse else (res, None)
  out = out[:, :, :t].transpose(0, 2, 1, 3).reshape(b, t, kh, g, h).astype(q.dtype)
  return out, (None if lse is None else lse[:, :, :t].reshape(b, kh, g, t).astype(jnp.float32))


# --------------------------------------------------------------------------------------------------- cudnn
def cudnn_attention(q: Array, q_pos: Array, q_seg: Array, src: Source, *, with_lse: bool = False):
  """cuDNN's fused attention through jax.nn.dot_product_attention, the mask rule as a dense [B, 1, T, S]
  boolean (cuDNN takes no segment ids). Returns (out [B, T, K, G, H], lse [B, K, G, T] or None)."""
  b, t, kh, g, h = q.shape
  mask = _mask(q_pos, q_seg, src.pos, src.seg)[:, None]
  res = jax.nn.dot_product_attention(q.reshape(b, t, kh * g, h), src.k.transpose(0, 2, 1, 3),
                                     src.v.transpose(0, 2, 1, 3), mask=mask, scale=1.0,
                                     implementation="cudnn", return_residual=with_lse)
  out, lse = res if with_lse else (res, None)
  out = out.reshape(b, t, kh, g, h)
  return out, (None if lse is None else lse.astype(jnp.float32).reshape(b, t, kh, g).transpose(0, 2, 3, 1))

"""Decode attention over a paged KV cache on TPU: `jax.experimental.pallas.ops.tpu.ragged_paged_attention`.

One new token per row attends to the row's live cache tokens, which sit in fixed-size pages of one shared
pool; the kernel reads only the pages a row's length covers (DMA by page id), so a decode step's attention
costs what the live cache holds, not what was allocated. The kernel serves mixed prefill and decode
(ragged query lengths); this wrapper builds its arguments for decode only (one query per row).

Layout (the kernel's):
  q          [B, num_heads, head_dim]: RoPE applied and already scaled by 1/sqrt(head_dim), as attention.py's
             callers pass queries (so `scale` defaults to 1.0; pass 1/sqrt(head_dim) for unscaled queries).
  kv_pages   [num_pages, page_size, 2 * num_kv_heads, head_dim]: K and V interleaved on the head axis,
             K of KV head h at 2h, V at 2h + 1. Query head i reads KV head i // (num_heads // num_kv_heads).
  lengths    int32 [B]: live tokens of each row, the new one included (its K/V already written). A row of
             length 0 is idle: its output is zeros.
  page_table int32 [B, pages_per_row]: page ids of each row's tokens in order; token t of row r is slot
             t % page_size of page page_table[r, t // page_size]. Entries past a row's length are not read
             for attention, but must still be valid page ids (the kernel's DMA of a partial block falls back
             to the row's first entry): ids are clamped to [0, num_pages) here, since an out-of-range DMA
             faults the chip.

Under a mesh (argument `mesh`, else the one `jax.set_mesh` set) the kernel runs per device in `jax.shard_map`,
like attention.splash_attention: rows over the batch mesh axes, heads over 'tensor' where both head counts
divide it and the per-device shape still suits the kernel (else heads stay whole, said once). The contract
for a batch-sharded mesh: each batch shard owns its rows' pages. kv_pages's page axis is sharded exactly like
the rows (shard j holds pages [j * P/n, (j+1) * P/n) of the global array), and page_table holds ids local to
the shard, in [0, P/n). The pool is split, never replicated; KV heads split over 'tensor' split the
interleaved axis into whole (K, V) pairs.

Not checked numerically here: the kernel has no CPU interpret mode (it takes no `interpret` argument, and
forcing TPU interpret mode on CPU crashed in an earlier probe), so on CPU the tests check the argument
construction against the kernel's own plain-JAX reference (`ref_ragged_paged_attention`) and a dense
reference of this contract, and compile the kernel ahead of time for a TPU topology (tests/test_ragged_tpu.py,
docs/attention.md). The kernel must be lowered for a TPU: on a TPU host, or with a mesh of TPU (compile-only)
devices set, since Pallas reads the device kind from the mesh.

`shape_problem` says why the kernel cannot serve a model shape (found by reading the kernel and by compiling
for v5e); attention's `resolve` falls back to the portable path with that reason.
"""
from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.ragged_paged_attention import kernel as _rpa
from jax.sharding import PartitionSpec as P

from hb_jax.parallel import SERVE_RULES, Rules, logical_to_spec, spec_ways

Array = jax.Array

HEAD_DIM = 128  # the only head_dim the kernel lowers (64 and 96 fail its accumulator, 256 Mosaic's K/V load)
DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32))
# Default blocks: K/V tokens one kernel step reads (the kernel's tuned tables use 512 to 2,048 for decode on
# v5e/v6e at page 128) and the VMEM of one K/V buffer (the kernel double-buffers it). A double buffer of 16 MiB
# exceeds v5e's default scoped VMEM (compiled: 8 MiB passes, 16 MiB does not); one page must fit.
BLOCK_TOKENS = 512
BLOCK_BYTES = 2 * 2**20
PAGE_BYTES = 4 * 2**20
QUERIES_PER_BLOCK = 32  # decode rows per kernel step (the kernel's tuned tables: 32 almost everywhere)

_log = logging.getLogger(__name__)
_said: set[str] = set()


def _say_once(message: str) -> None:
  if message not in _said:
    _said.add(message)
    _log.info("ragged_paged_attention: %s", message)


def _heads_per_block(num_heads: int, num_kv_heads: int, dtype) -> tuple[int, int]:
  """(query heads, interleaved K/V heads) the kernel takes per grid step; ValueError where it cannot tile."""
  return _rpa.get_min_heads_per_blk(num_heads, 2 * num_kv_heads, dtype, dtype)


def shape_problem(num_heads: int, num_kv_heads: int, head_dim: int, page_size: int, dtype) -> str | None:
  """Why the kernel cannot serve this shape (its reasons joined by "; "), or None when it can. Limits of the installed kernel
  (jax 0.10.2), from its source and from compiling for v5e: head_dim exactly 128; bfloat16 or float32 (the
  cache in the query's dtype); 2 x num_kv_heads interleaved rows that tile the TPU's sublanes (num_kv_heads
  1, 2, 4 or a multiple of 8 in bfloat16; 1, 2 or a multiple of 4 in float32); query heads per block a
  multiple of 8 or all of them; one page's K/V within PAGE_BYTES of VMEM."""
  dt = jnp.dtype(dtype)
  problems = []
  if dt not in DTYPES:
    problems.append(f"dtype {dt.name}: the kernel takes bfloat16 or float32")
  if head_dim != HEAD_DIM:
    problems.append(f"head_dim {head_dim}: the kernel's lane layout takes exactly {HEAD_DIM}")
  if num_kv_heads < 1 or num_heads % num_kv_heads:
    problems.append(f"{num_heads} query heads are not a whole number of groups of {num_kv_heads} KV heads")
  if page_size < 1:
    problems.append(f"page_size {page_size}")
  if dt not in DTYPES or num_kv_heads < 1 or num_heads % num_kv_heads:
    return "; ".join(problems)
  try:
    q_blk, kv_blk = _heads_per_block(num_heads, num_kv_heads, dt)
  except ValueError:
    rule = "1, 2, 4 or a multiple of 8" if dt.itemsize == 2 else "1, 2 or a multiple of 4"
    problems.append(f"{num_kv_heads} KV heads: the kernel's 2 x {num_kv_heads} interleaved K/V rows do not "
                    f"tile the TPU's sublanes ({dt.name} takes {rule} KV heads)")
    return "; ".join(problems)
  if q_blk != num_heads and q_blk % 8:
    problems.append(f"{q_blk} query heads per kernel block ({num_heads} in all): Pallas needs a multiple of 8 "
                    "or all of them")
  page_bytes = page_size * kv_blk * head_dim * dt.itemsize
  if page_bytes > PAGE_BYTES:
    problems.append(f"page_size {page_size}: one page of {kv_blk} K/V rows is {page_bytes / 2**20:.0f} MiB, "
                    f"over the {PAGE_BYTES / 2**20:.0f} MiB the kernel's double-buffered VMEM block allows")
  return "; ".join(problems) or None


def block_sizes(rows: int, num_heads: int, num_kv_heads: int, head_dim: int, page_size: int, pages_per_row: int,
                dtype) -> tuple[int, int]:
  """(pages_per_block, queries_per_block) for one device's call: as many pages as keep a K/V block within
  BLOCK_TOKENS tokens and BLOCK_BYTES (at least one page, at most a row's), and up to QUERIES_PER_BLOCK rows.
  Not tuned: the kernel's own table (read from jax.devices(), the CPU when compiling ahead of time) has no
  entry for equal query and KV heads per block, LLaMA-1's case."""
  _, kv_blk = _heads_per_block(num_heads, num_kv_heads, jnp.dtype(dtype))
  token_bytes = kv_blk * head_dim * jnp.dtype(dtype).itemsize
  tokens = min(BLOCK_TOKENS, BLOCK_BYTES // token_bytes)
  return max(1, min(pages_per_row, tokens // page_size)), max(1, min(rows, QUERIES_PER_BLOCK))


def kernel_arguments(q: Array, kv_pages: Array, lengths: Array, page_table: Array) -> tuple[Array, ...]:
  """The kernel's positional arguments for one query per row: (q, kv_pages, kv_lens, page_indices, cu_q_lens,
  num_seqs). Row r's query is token r (cu_q_lens = 0..B), every row counts (num_seqs = B); lengths are
  clamped to [1, pages_per_row * page_size] (a zero-length row would leave its output unwritten and the first
  block the kernel prefetched for it unawaited; past the table it would read the row's first page again) and
  page ids to [0, num_pages)."""
  b = q.shape[0]
  num_pages, page_size = kv_pages.shape[:2]
  kv_lens = jnp.clip(lengths.astype(jnp.int32), 1, page_table.shape[1] * page_size)
  pages = jnp.clip(page_table.astype(jnp.int32), 0, num_pages - 1)
  return q, kv_pages, kv_lens, pages, jnp.arange(b + 1, dtype=jnp.int32), jnp.array([b], jnp.int32)


def decode_attention(q: Array, kv_pages: Array, lengths: Array, page_table: Array, *, scale: float = 1.0,
                     mesh=None, rules: Rules = SERVE_RULES, pages_per_block: int | None = None,
                     queries_per_block: int | None = None, vmem_limit_bytes: int | None = None) -> Array:
  """One new token per row over its paged cache (the module docstring has the layout): [B, num_heads,
  head_dim] in q's dtype, zeros for rows of length 0. `scale` multiplies q . k (1.0 for queries scaled as
  attention.py's are). Block sizes apply per device (None: `block_sizes`); `vmem_limit_bytes` None keeps
  the compiler's default scoped VMEM."""
  b, n, hd = q.shape
  num_pages, page_size, kv2, hd_kv = kv_pages.shape
  if kv2 % 2 or hd_kv != hd or lengths.shape != (b,) or page_table.shape[0] != b:
    raise ValueError(f"decode_attention: q {q.shape}, kv_pages {kv_pages.shape}, lengths {lengths.shape}, "
                     f"page_table {page_table.shape} do not match (kv_pages [pages, page_size, 2 x KV heads, "
                     "head_dim], lengths [B], page_table [B, pages_per_row])")
  k = kv2 // 2
  if kv_pages.dtype != q.dtype:
    raise ValueError(f"decode_attention: kv_pages {kv_pages.dtype} must be q's dtype {q.dtype}")
  problem = shape_problem(n, k, hd, page_size, q.dtype)
  if problem:
    raise ValueError(f"decode_attention: the TPU kernel cannot serve this shape: {problem}")

  def per_device(q, kv_pages, lengths, page_table):
    rows, heads, _ = q.shape
    kv_heads = kv_pages.shape[2] // 2
    ppb, qpb = block_sizes(rows, heads, kv_heads, hd, page_size, page_table.shape[1], q.dtype)
    out = _kernel(*kernel_arguments(q, kv_pages, lengths, page_table), sm_scale=float(scale),
                  num_kv_pages_per_block=pages_per_block or ppb, num_queries_per_block=queries_per_block or qpb,
                  vmem_limit_bytes=vmem_limit_bytes)
    return jnp.where((lengths > 0)[:, None, None], out, jnp.zeros((), out.dtype))

  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  if mesh.empty or math.prod(mesh.shape.values()) == 1:
    return per_device(q, kv_pages, lengths, page_table)
  sizes = dict(mesh.shape)
  row, heads = logical_to_spec(("batch", "act_heads"), (b, n), rules, sizes)
  kv_heads = logical_to_spec(("batch", "act_kv_heads"), (b, k), rules, sizes)[1]  # whole (K, V) pairs
  split = spec_ways(heads, sizes)
  local_problem = shape_problem(n // split, k // split, hd, page_size, q.dtype) if heads == kv_heads else None
  if heads != kv_heads:
    _say_once(f"{k} KV heads do not split like {n} query heads over the mesh; heads unsplit")
    heads = None
  elif local_problem:
    _say_once(f"{n // split} query / {k // split} KV heads per device do not suit the kernel ({local_problem}); "
              "heads unsplit")
    heads = None
  shards = spec_ways(row, sizes)
  if num_pages % shards:
    raise ValueError(f"decode_attention: {num_pages} pages do not split over the {shards} batch shards of the "
                     f"rows ({row}); each shard owns its rows' pages")
  q_spec, kv_spec = P(row, heads, None), P(row, None, heads, None)
  return jax.shard_map(per_device, mesh=mesh, in_specs=(q_spec, kv_spec, P(row), P(row, None)),
                       out_specs=q_spec, check_vma=False)(q, kv_pages, lengths, page_table)


_kernel = _rpa.ragged_paged_attention  # a module attribute, so the CPU tests can stand a reference in for it

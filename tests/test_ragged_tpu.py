"""hb_jax/model/ragged_tpu.py: the TPU ragged paged decode attention wrapper.

The kernel has no CPU interpret mode, so its numbers cannot be checked here. On CPU: a plain-JAX reference of
the wrapper's contract equals attention over each row's live tokens; the kernel's own plain-JAX reference,
fed `kernel_arguments`, equals it; and the shard_map plumbing (local page ids, heads over 'tensor') gives the
reference's numbers with the reference standing in for the kernel. With libtpu: `shape_problem` agrees with
what the TPU compiler accepts, and the 7B curation decode shape compiles for v5e-8 and v4-8 inside shard_map
(the numbers are in docs/attention.md; `-s` prints them).
"""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas.ops.tpu import ragged_paged_attention as rpa
from jax.sharding import NamedSharding, PartitionSpec as P

from hb_jax.config import MeshConfig
from hb_jax.model import ragged_tpu
from hb_jax.parallel import make_mesh
from hb_jax.preflight import libtpu

needs_libtpu = pytest.mark.skipif(not libtpu.installed(), reason="libtpu (the tpu extra) is not installed")


def reference(q, kv_pages, lengths, page_table, scale=1.0):
  """The contract in plain JAX: gather each row's pages in order, read K of KV head h at 2h and V at 2h + 1,
  mask slots at or past the row's length, softmax in float32. Rows of length 0 give zeros."""
  b, n, h = q.shape
  kv2 = kv_pages.shape[2]
  k = kv2 // 2
  rows = kv_pages[page_table].reshape(b, -1, kv2, h)  # [B, pages_per_row * page_size, 2K, H]
  live = jnp.arange(rows.shape[1])[None] < lengths[:, None]  # [B, S]
  keys = jnp.where(live[..., None, None], rows[:, :, 0::2], 0).astype(jnp.float32)  # garbage past the length
  values = jnp.where(live[..., None, None], rows[:, :, 1::2], 0).astype(jnp.float32)
  s = jnp.einsum("bkgh,bskh->bkgs", q.reshape(b, k, n // k, h).astype(jnp.float32), keys) * scale
  p = jax.nn.softmax(jnp.where(live[:, None, None], s, -jnp.inf), axis=-1)
  p = jnp.where((lengths > 0)[:, None, None, None], p, 0.0)
  return jnp.einsum("bkgs,bskh->bkgh", p, values).reshape(b, n, h).astype(q.dtype)


def paged(keys, values, page_size, rng, spare=3):
  """Contiguous per-row K, V [B, S, K, H] (S a multiple of page_size) as a shuffled page pool with `spare`
  unused pages of NaN: (kv_pages [B * S / page_size + spare, page_size, 2K, H], page_table [B, S / page_size])."""
  b, s, k, h = keys.shape
  per_row = s // page_size
  inter = np.stack([keys, values], axis=3).reshape(b, per_row, page_size, 2 * k, h)  # K at 2h, V at 2h + 1
  order = rng.permutation(b * per_row + spare)
  pool = np.full((b * per_row + spare, page_size, 2 * k, h), np.nan, keys.dtype)
  pool[order[:b * per_row]] = inter.reshape(b * per_row, page_size, 2 * k, h)
  return pool, order[:b * per_row].reshape(b, per_row).astype(np.int32)


def dense(q, keys, values, lengths, scale):
  """Attention of q [B, N, H] over keys/values [B, S, K, H] up to each row's length, in float64 numpy."""
  b, n, h = q.shape
  k = keys.shape[2]
  out = np.zeros((b, n, h))
  for r in range(b):
    for i in range(n):
      kv = i // (n // k)
      s = keys[r, :lengths[r], kv].astype(np.float64) @ q[r, i].astype(np.float64) * scale
      p = np.exp(s - s.max()) if lengths[r] else s
      out[r, i] = p @ values[r, :lengths[r], kv] / max(p.sum(), 1e-300) if lengths[r] else 0.0
  return out


def _example(seed=0, b=5, n=8, k=2, h=128, page_size=4, per_row=3, dtype=np.float32):
  rng = np.random.default_rng(seed)
  s = page_size * per_row
  keys = rng.standard_normal((b, s, k, h)).astype(dtype)
  values = rng.standard_normal((b, s, k, h)).astype(dtype)
  q = rng.standard_normal((b, n, h)).astype(dtype)
  lengths = np.array([s, 1, 0, page_size + 1, s - 1][:b] + list(rng.integers(1, s + 1, max(0, b - 5))), np.int32)
  pool, table = paged(keys, values, page_size, rng)
  return q, keys, values, lengths, pool, table


def test_reference_is_attention_over_each_rows_live_tokens():
  q, keys, values, lengths, pool, table = _example()
  scale = 1 / math.sqrt(q.shape[-1])
  got = np.asarray(reference(jnp.asarray(q), jnp.asarray(pool), jnp.asarray(lengths), jnp.asarray(table), scale))
  assert np.isfinite(got).all()  # NaN pages and slots past a length are never seen
  np.testing.assert_allclose(got, dense(q, keys, values, lengths, scale), rtol=1e-5, atol=1e-5)
  assert not got[2].any()  # the idle row


def test_kernel_arguments_give_the_kernels_own_reference():
  """jax's plain-JAX ref_ragged_paged_attention (the kernel's semantics) fed this module's decode arguments."""
  q, keys, values, lengths, pool, table = _example(seed=1, b=6)
  scale = 1 / math.sqrt(q.shape[-1])
  args = ragged_tpu.kernel_arguments(*map(jnp.asarray, (q, pool, lengths, table)))
  np.testing.assert_array_equal(args[4], np.arange(7))  # row r's query is token r
  np.testing.assert_array_equal(args[5], [6])
  assert int(args[2].min()) == 1 and int(args[3].max()) < pool.shape[0]  # clamped for the DMA
  ints = [np.asarray(a) for a in args[2:]]  # as numpy constants the reference's slices are static: one jit
  theirs = np.asarray(jax.jit(lambda q, kv: rpa.ref_ragged_paged_attention(q, kv, *ints, sm_scale=scale))(
      *args[:2]))
  ours = np.asarray(reference(*map(jnp.asarray, (q, pool, lengths, table)), scale))
  live = lengths > 0  # an idle row is clamped to length 1 for the kernel and zeroed after it
  np.testing.assert_allclose(theirs[live], ours[live], rtol=1e-5, atol=1e-5)


def _standin(seen):
  def kernel(q, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs, *, sm_scale, **blocks):
    seen.append((q.shape, kv_pages.shape, page_indices.shape, blocks))
    return reference(q, kv_pages, kv_lens, page_indices, sm_scale)
  return kernel


@pytest.mark.parametrize("k, heads_split", [(4, True), (2, False)])
def test_sharded_rows_own_their_pages(monkeypatch, k, heads_split):
  """Under a 2 x 1 x 4 CPU mesh with the reference standing in for the kernel: rows and pages split over
  'data' with page ids local to each shard; heads over 'tensor' when 4 divides both counts (8 / 4), whole
  otherwise (8 / 2)."""
  seen = []
  monkeypatch.setattr(ragged_tpu, "_kernel", _standin(seen))
  rng = np.random.default_rng(2)
  shards, b, n, h, page_size, per_row = 2, 8, 8, 128, 4, 3
  q, keys, values, lengths, _, _ = _example(seed=3, b=b, n=n, k=k, h=h, page_size=page_size, per_row=per_row)
  rows = b // shards
  pools, tables = zip(*(paged(keys[j * rows:(j + 1) * rows], values[j * rows:(j + 1) * rows], page_size, rng)
                        for j in range(shards)))
  pool, table = np.concatenate(pools), np.concatenate(tables)  # shard j's 15 pages, ids local to it
  mesh = make_mesh(MeshConfig(2, 1, 4), jax.devices()[:8])
  scale = 1 / math.sqrt(h)
  specs = (P("data", "tensor", None), P("data", None, "tensor", None), P("data"), P("data", None))
  arrays = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip((q, pool, lengths, table), specs)]
  fn = jax.jit(lambda *a: ragged_tpu.decode_attention(*a, scale=scale, mesh=mesh))
  got = np.asarray(fn(*arrays))
  np.testing.assert_allclose(got, dense(q, keys, values, lengths, scale), rtol=1e-5, atol=1e-5)
  local_heads = n // 4 if heads_split else n
  local_kv = 2 * (k // 4 if heads_split else k)
  assert seen[0][:3] == ((4, local_heads, h), (pool.shape[0] // 2, page_size, local_kv, h), (4, per_row))
  assert seen[0][3]["num_kv_pages_per_block"] == per_row and seen[0][3]["num_queries_per_block"] == 4
  with pytest.raises(ValueError, match="pages do not split"):
    jax.jit(lambda *a: ragged_tpu.decode_attention(*a, mesh=mesh))(q, pool[:-1], lengths, table)


def test_shape_problem():
  assert ragged_tpu.shape_problem(32, 32, 128, 128, jnp.bfloat16) is None  # LLaMA-7B
  assert ragged_tpu.shape_problem(64, 8, 128, 64, jnp.bfloat16) is None  # LLaMA-2 70B
  assert ragged_tpu.shape_problem(8, 2, 128, 16, jnp.float32) is None
  smol = ragged_tpu.shape_problem(9, 3, 64, 64, jnp.bfloat16)  # SmolLM2-135M
  assert "head_dim 64" in smol and "3 KV heads" in smol, smol
  assert "12 KV heads" in ragged_tpu.shape_problem(12, 12, 128, 128, jnp.bfloat16)
  assert "4 query heads per kernel block" in ragged_tpu.shape_problem(8, 8, 128, 128, jnp.float32)
  assert "float16" in ragged_tpu.shape_problem(32, 32, 128, 128, jnp.float16)
  assert "page_size 2048" in ragged_tpu.shape_problem(32, 32, 128, 2048, jnp.bfloat16)
  with pytest.raises(ValueError, match="head_dim 64"):
    ragged_tpu.decode_attention(jnp.zeros((2, 9, 64)), jnp.zeros((4, 8, 6, 64)), jnp.ones(2, jnp.int32),
                                jnp.zeros((2, 2), jnp.int32))


# ------------------------------------------------------------------------------------------ TPU, compiled
def _tpu(name):
  from hb_jax.preflight import topology
  return topology.target(name)


def _sds(mesh, shape, dtype, spec):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


@needs_libtpu
def test_shape_problem_matches_the_tpu_compiler():
  """Each shape compiles for one v5e device iff shape_problem finds nothing (the kernel called directly)."""
  device = _tpu("v5e-8").devices[0]
  mesh = make_mesh(MeshConfig(1, 1, 1), [device], all_devices=[device])
  cases = [(32, 32, 128, 128, jnp.bfloat16), (8, 2, 128, 16, jnp.float32), (8, 8, 128, 1024, jnp.bfloat16),
           (9, 3, 128, 64, jnp.bfloat16), (32, 32, 64, 128, jnp.bfloat16), (8, 8, 256, 128, jnp.bfloat16),
           (8, 8, 128, 128, jnp.float32), (8, 8, 128, 2048, jnp.bfloat16)]
  rows, per_row = 8, 2
  for n, k, h, page, dt in cases:
    problem = ragged_tpu.shape_problem(n, k, h, page, dt)
    args = (_sds(mesh, (rows, n, h), dt, P()), _sds(mesh, (rows * per_row, page, 2 * k, h), dt, P()),
            _sds(mesh, (rows,), jnp.int32, P()), _sds(mesh, (rows, per_row), jnp.int32, P()))
    fn = jax.jit(lambda q, kv, lengths, table: rpa.ragged_paged_attention(
        *ragged_tpu.kernel_arguments(q, kv, lengths, table), num_kv_pages_per_block=1, num_queries_per_block=8))
    try:
      with jax.set_mesh(mesh):
        fn.lower(*args).compile()
      compiled = True
    except Exception:  # ValueError, AssertionError, Mosaic's or the compiler's VMEM refusal
      compiled = False
    assert compiled == (problem is None), (n, k, h, page, jnp.dtype(dt).name, problem)


def _decode_7b(name, data, tensor, page_size, compare):
  """LLaMA-7B's curation decode step (configs/llama7b.py: 128 rows per replica of `tensor` chips, 1,280
  slots) for one layer's attention, rows over 'data' and heads over 'tensor'; with `compare`, the same step as
  the dense einsum over a contiguous cache (the xla path's decode) and as a gather of each row's pages."""
  target = _tpu(name)
  mesh = make_mesh(MeshConfig(data, 1, tensor), target.devices, all_devices=target.devices)
  n = k = 32
  h, slots, b = 128, 1280, 128 * data
  per_row = slots // page_size
  q = _sds(mesh, (b, n, h), jnp.bfloat16, P("data", "tensor", None))
  pool = _sds(mesh, (b * per_row, page_size, 2 * k, h), jnp.bfloat16, P("data", None, "tensor", None))
  lengths = _sds(mesh, (b,), jnp.int32, P("data"))
  table = _sds(mesh, (b, per_row), jnp.int32, P("data", None))
  programs = {"ragged_paged_attention": (jax.jit(lambda *a: ragged_tpu.decode_attention(*a, mesh=mesh)),
                                         (q, pool, lengths, table))}
  if compare:
    cache = _sds(mesh, (b, k, slots, h), jnp.bfloat16, P("data", "tensor", None, None))
    qg = _sds(mesh, (b, k, 1, h), jnp.bfloat16, P("data", "tensor", None, None))

    def einsum(q, keys, values, lengths):  # one query per row over every slot, masked past the length
      s = jnp.einsum("bkgh,bksh->bkgs", q, keys, preferred_element_type=jnp.float32)
      s = jnp.where((jnp.arange(slots)[None] < lengths[:, None])[:, None, None], s, -jnp.inf)
      return jnp.einsum("bkgs,bksh->bkgh", jax.nn.softmax(s, -1).astype(q.dtype), values)

    def gather(q, pool, lengths, table):  # per device: each row's pages gathered in bf16, then the einsum
      def local(q, pool, lengths, table):
        rows = pool[table].reshape(q.shape[0], slots, pool.shape[2], h)
        return einsum(q[:, :, None], rows[:, :, 0::2].transpose(0, 2, 1, 3),
                      rows[:, :, 1::2].transpose(0, 2, 1, 3), lengths)
      return jax.shard_map(local, mesh=mesh, in_specs=(P("data", "tensor", None), P("data", None, "tensor", None),
                                                       P("data"), P("data", None)),
                           out_specs=P("data", "tensor", None, None))(q, pool, lengths, table)
    programs["dense einsum, contiguous cache"] = (jax.jit(einsum), (qg, cache, cache, lengths))
    programs["gather pages (plain JAX)"] = (jax.jit(gather), (q, pool, lengths, table))
  out = {}
  for label, (fn, args) in programs.items():
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    out[label] = (compiled, m.argument_size_in_bytes, m.temp_size_in_bytes, seconds)
    print(f"{name} mesh {data}x1x{tensor}, {b} rows x {slots} slots, page {page_size}: {label}: arguments "
          f"{m.argument_size_in_bytes / 2**20:.1f} MiB, temporaries {m.temp_size_in_bytes / 2**20:.1f} MiB, "
          f"output {m.output_size_in_bytes / 2**20:.2f} MiB per device, compiled in {seconds:.1f} s")
  return out


@needs_libtpu
@pytest.mark.parametrize("name, data, tensor, page_size, compare", [("v5e-8", 2, 4, 128, True),
                                                                     ("v4-8", 1, 4, 64, False)])
def test_7b_decode_compiles_for_tpu(name, data, tensor, page_size, compare):
  out = _decode_7b(name, data, tensor, page_size, compare)
  compiled, arguments, temporaries, _ = out["ragged_paged_attention"]
  per_row, rows, kv = 1280 // page_size, 128, 2 * 32 // tensor
  pool_bytes = rows * per_row * page_size * kv * 128 * 2  # this device's rows' pages, its heads
  assert pool_bytes <= arguments < pool_bytes + 2**20  # + q, lengths, page table
  assert temporaries < 2**20  # no copy of the cache
  hlo = compiled.as_text()
  assert 'custom_call_target="tpu_custom_call"' in hlo and "ragged_paged_attention" in hlo
  assert f"bf16[{rows},{32 // tensor},128]" in hlo  # the kernel runs on this device's rows and heads
  if compare:
    _, dense_args, _, _ = out["dense einsum, contiguous cache"]
    assert abs(dense_args - arguments) < 2**20  # the same cache bytes, paged or contiguous
    assert out["gather pages (plain JAX)"][2] >= pool_bytes  # the portable gather copies the live cache


@needs_libtpu
def test_the_samplers_paged_decode_runs_the_kernel_on_tpu():
  """The decode program the Sampler runs over a paged cache (programs.decode, `auto` attention), compiled for
  a v5e-8 slice with rows over data=2 and heads over tensor=4: attention resolves to the kernel, which runs
  on each device's rows and heads."""
  import dataclasses

  from hb_jax.config import ModelConfig
  from hb_jax.model.llama import abstract_model
  from hb_jax.parallel import SERVE_RULES, param_shardings
  from hb_jax.sample import programs as sp
  from hb_jax.sample.sampling import Sampling

  cfg = ModelConfig(vocab_size=512, hidden_size=1024, intermediate_size=512, num_layers=1, num_heads=8,
                    num_kv_heads=8, max_position_embeddings=512, dtype="bfloat16", param_dtype="bfloat16")
  target = _tpu("v5e-8")
  mesh = make_mesh(MeshConfig(2, 1, 4), target.devices, all_devices=target.devices)
  graphdef, state = abstract_model(dataclasses.replace(cfg, attention="auto"))
  rows, slots, page, max_new = 8, 256, 64, 16
  spec = sp.DecodeSpec(Sampling(), max_new, 8)
  rule = jax.tree.map(lambda a: _sds(mesh, a.shape, a.dtype, P()), sp.StopRule.make((2,), ()))
  with jax.set_mesh(mesh):
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state,
                          param_shardings(state, SERVE_RULES, mesh))
    decode_state = jax.eval_shape(lambda: sp.init_state(cfg, rows, slots, max_new, page))
    replicated = NamedSharding(mesh, P())
    compiled = sp.decode.lower(graphdef, params, decode_state, rule, None,
                               jax.ShapeDtypeStruct((rows,), jnp.bool_, sharding=replicated),
                               jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
                               _sds(mesh, (rows, slots // page), jnp.int32, P()), spec=spec).compile()
  hlo = compiled.as_text()
  assert 'custom_call_target="tpu_custom_call"' in hlo and "ragged_paged_attention" in hlo
  assert "bf16[4,2,128]" in hlo  # 4 rows and 2 of the 8 heads per device

"""The network's own invariants: config rules, RoPE scaling, masking (packing, padding), cache, dropout."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hb_jax.config import ConfigError, ModelConfig, RopeScaling, ffn_dim
from hb_jax.convert.sources import interleaved_to_rotate_half, rotate_half_to_interleaved
from hb_jax.model.kv_cache import KVCache
from hb_jax.model.llama import Llama, abstract_model, init_cache, project_einsum, rope_inv_freq
from hb_jax.model.presets import PRESETS, preset

CFG = ModelConfig(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  intermediate_size=48)


@pytest.fixture(scope="module")
def model():
  return Llama(CFG, rngs=nnx.Rngs(0))


def _tokens(b, t, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(3, CFG.vocab_size, (b, t)), jnp.int32)


def test_abstract_model_matches_a_real_one_and_each_call_is_a_fresh_copy(model):
  from hb_jax.api import build_model

  graphdef, state = abstract_model(CFG)
  real = nnx.state(model)
  assert jax.tree.structure(state) == jax.tree.structure(real)
  for (path, a), (_, r) in zip(nnx.to_flat_state(state), nnx.to_flat_state(real)):
    assert (a.shape, a.dtype) == (r.shape, r.dtype), path
    assert a.get_metadata()["logical_axes"] == r.get_metadata()["logical_axes"], path
  # Filling one caller's copy (build_model does) leaves the memo abstract for the next caller.
  params = nnx.to_pure_dict(real)
  built = build_model(CFG, params)
  np.testing.assert_array_equal(built.lm_head.kernel[...], model.lm_head.kernel[...])
  _, again = abstract_model(CFG)
  assert isinstance(again["lm_head"]["kernel"].get_value(), jax.ShapeDtypeStruct)
  assert abstract_model(CFG)[0] == graphdef


def test_ffn_rule_and_preset_sizes():
  assert ffn_dim(4096) == 11008  # LLaMA 7B
  assert ffn_dim(8192, 4096, 1.3) == 28672  # LLaMA-2 70B
  assert ffn_dim(4096, 1024, 1.3) == 14336  # LLaMA-3 8B
  assert PRESETS["llama-65b"].intermediate_size == 22016
  assert abs(PRESETS["llama-7b"].num_params - 6.738e9) < 1e7
  assert abs(PRESETS["llama2-70b"].num_params - 68.98e9) < 1e8
  assert abs(preset("bench-58m").num_params - 58e6) < 1e6
  with pytest.raises(KeyError, match="unknown model preset"):
    preset("llama-1b")


def test_config_errors_name_the_key():
  with pytest.raises(ConfigError, match="model.num_heads 6 must be a multiple of model.num_kv_heads 4"):
    ModelConfig(vocab_size=8, hidden_size=24, num_layers=1, num_heads=6, num_kv_heads=4)
  with pytest.raises(ConfigError, match="model.dtype"):
    ModelConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, dtype="float8")
  with pytest.raises(ConfigError, match="unknown keys"):
    ModelConfig.from_dict({**CFG.to_dict(), "n_layers": 3})
  assert ModelConfig.from_json(CFG.to_json()) == CFG


def test_llama31_rope_scaling_regimes():
  base = ModelConfig(vocab_size=8, hidden_size=64, num_layers=1, num_heads=1, rope_theta=5e5)
  scaled = dataclasses.replace(base, rope_scaling=RopeScaling(original_max_position_embeddings=256))
  f0, f1 = np.asarray(rope_inv_freq(base)), np.asarray(rope_inv_freq(scaled))
  wavelen = 2 * np.pi / f0
  high, low = wavelen < 256 / 4, wavelen > 256 / 1
  medium = ~high & ~low
  assert high.any() and low.any() and medium.any()
  np.testing.assert_allclose(f1[high], f0[high])  # high frequencies untouched
  np.testing.assert_allclose(f1[low], f0[low] / 8, rtol=1e-6)  # low frequencies divided by the factor
  assert np.all((f1[medium] < f0[medium]) & (f1[medium] > f0[medium] / 8))  # smoothly in between


def test_meta_rope_permutation_pairs_rows_like_hf():
  rows = np.arange(16, dtype=np.float32)[:, None]  # 2 heads x head_dim 8
  hf = interleaved_to_rotate_half(rows, n_heads=2)[:, 0]
  # Meta stores (real, imag) pairs adjacently; HF puts the reals first and the imaginaries second.
  np.testing.assert_array_equal(hf, [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15])
  np.testing.assert_array_equal(rotate_half_to_interleaved(interleaved_to_rotate_half(rows, 2), 2), rows)


def test_packed_rows_equal_separate_sequences(model):
  a, b = _tokens(1, 7, 1), _tokens(1, 5, 2)
  la, _ = model(a)
  lb, _ = model(b)
  packed = jnp.concatenate([a, b, jnp.zeros((1, 4), jnp.int32)], axis=1)
  positions = jnp.asarray([list(range(7)) + list(range(5)) + [0] * 4])
  segments = jnp.asarray([[1] * 7 + [2] * 5 + [0] * 4])
  lp, _ = model(packed, positions, segments)
  np.testing.assert_allclose(lp[0, :7], la[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(lp[0, 7:12], lb[0], rtol=1e-5, atol=1e-5)
  assert np.isfinite(np.asarray(lp)).all()


def test_left_padding_equals_unpadded(model):
  x = _tokens(1, 6)
  ref, _ = model(x)
  padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), x], axis=1)
  positions = jnp.asarray([[0, 0, 0, 0, 1, 2, 3, 4, 5]])
  segments = jnp.asarray([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
  out, _ = model(padded, positions, segments)
  np.testing.assert_allclose(out[:, 3:], ref, rtol=1e-5, atol=1e-5)


def test_cache_prefill_then_steps_equal_full_forward(model):
  x = _tokens(2, 10)
  full, _ = model(x)
  cache = init_cache(CFG, 2, 16)
  pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
  seg = jnp.ones((2, 10), jnp.int32)
  first, cache = model(x[:, :6], pos[:, :6], seg[:, :6], cache=cache)
  np.testing.assert_allclose(first, full[:, :6], rtol=1e-5, atol=1e-5)
  for t in range(6, 10):
    step, cache = model(x[:, t:t + 1], pos[:, t:t + 1], seg[:, t:t + 1], cache=cache)
    np.testing.assert_allclose(step[:, 0], full[:, t], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(cache.index, [10, 10])


def test_cached_path_and_shared_prefix_equal_the_scanned_full_forward(model):
  """With a cache the model runs its layers unrolled; a batch-1 shared prefix (`prefix_cache`, the scan) is
  attended beside each row's own cache, never copied into it. Either prefix layout, pre-sliced `blocks` or
  none, and the scanned forward without a cache (the scorer's) all give the plain forward's logits."""
  prefix_len, b = 5, 2
  x = jnp.concatenate([jnp.broadcast_to(_tokens(1, prefix_len, 7), (b, prefix_len)), _tokens(b, 6)], axis=1)
  full, _ = model(x)
  pre_tok = jnp.zeros((1, 8), jnp.int32).at[:, :prefix_len].set(x[:1, :prefix_len])
  pre_seg = (jnp.arange(8) < prefix_len).astype(jnp.int32)[None]  # 3 padding slots (segment 0)
  stacked = model.prefix_cache(pre_tok, jnp.arange(8)[None] * pre_seg, pre_seg)
  assert not stacked.per_layer and stacked.k.shape == (CFG.num_layers, 1, CFG.num_kv_heads, 8, CFG.head_dim)
  pos = jnp.broadcast_to(prefix_len + jnp.arange(6), (b, 6))
  ones = jnp.ones((b, 6), jnp.int32)
  for pre, kw in ((stacked, {}), (stacked.unstacked(), {}), (stacked.unstacked(), dict(blocks=model.layer_blocks()))):
    cache = init_cache(CFG, b, 8)
    first, cache = model(x[:, prefix_len:9], pos[:, :4], ones[:, :4], cache=cache, prefix=pre, **kw)
    np.testing.assert_allclose(first, full[:, prefix_len:9], rtol=1e-5, atol=1e-5)
    step, cache = model(x[:, 9:10], pos[:, 4:5], ones[:, :1], cache=cache, prefix=pre, **kw)
    np.testing.assert_allclose(step[:, 0], full[:, 9], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cache.index, [5, 5])
    no_cache, _ = model(x[:, prefix_len:], pos, ones, prefix=pre)
    np.testing.assert_allclose(no_cache, full[:, prefix_len:], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="one K and one V array per layer"):
    model(x[:, :1], cache=KVCache.zeros(CFG.num_layers, b, 8, CFG.num_kv_heads, CFG.head_dim))
  with pytest.raises(ValueError, match="blocks are for the cached path"):
    model(x[:, :1], blocks=model.layer_blocks())


def test_cache_rows_advance_independently(model):
  """Row 0 writes 3 prompt tokens, row 1 writes 5: each row's next step sees only its own past."""
  x = _tokens(2, 5)
  cache = init_cache(CFG, 2, 8)
  pos = jnp.broadcast_to(jnp.arange(5), (2, 5))
  seg = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])  # row 0: right-padded, 3 real tokens
  _, cache = model(x, pos, seg, cache=cache)
  cache = cache.replace(index=jnp.asarray([3, 5]))  # row 0 overwrites its padding slots next
  nxt = _tokens(2, 1, 9)
  step, _ = model(nxt, jnp.asarray([[3], [5]]), jnp.ones((2, 1), jnp.int32), cache=cache)
  ref0, _ = model(jnp.concatenate([x[:1, :3], nxt[:1]], axis=1))
  ref1, _ = model(jnp.concatenate([x[1:], nxt[1:]], axis=1))
  np.testing.assert_allclose(step[0, 0], ref0[0, -1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(step[1, 0], ref1[0, -1], rtol=1e-5, atol=1e-5)


def test_decode_loop_updates_the_cache_in_place(model):
  """A decode loop (as the sampler's while_loop, its layer weights sliced once outside it) must not copy,
  transpose or rebuild a layer's K/V buffer per step: with the cache as scan xs/ys it did, and a step cost
  several times its matmuls."""
  b, slots = 2, 16
  graphdef, params = nnx.split(model)
  cache = init_cache(CFG, b, slots)

  def decode(params, cache, tok_b):
    model = nnx.merge(graphdef, params)
    blocks = model.layer_blocks()

    def body(i, carry):
      cache, tok_b = carry
      logits, cache = model(tok_b[:, None], cache.index[:, None], jnp.ones((b, 1), jnp.int32), cache=cache,
                            blocks=blocks)
      return cache, jnp.argmax(logits[:, 0], -1).astype(jnp.int32)
    return jax.lax.fori_loop(0, 4, body, (cache, tok_b))

  hlo = jax.jit(decode, donate_argnums=1).lower(params, cache, jnp.zeros((b,), jnp.int32)).compile().as_text()
  shape = "f32[" + ",".join(map(str, cache.k[0].shape)) + "]"
  producers = [line.split("=", 1)[1].strip() for line in hlo.splitlines() if f"= {shape}" in line]
  assert producers, f"no instruction of a layer's cache shape {shape} in the compiled decode loop"
  rebuilt = [p for p in producers if any(op in p.split("(")[0] for op in ("copy", "broadcast", "transpose"))]
  assert not rebuilt, "layer-cache copies per step:\n" + "\n".join(rebuilt)


def test_dropout_only_with_a_key_and_remat_keeps_gradients():
  cfg = dataclasses.replace(CFG, dropout_rate=0.1)
  m = Llama(cfg, rngs=nnx.Rngs(0))
  x = _tokens(2, 8)
  det1, _ = m(x)
  det2, _ = m(x)
  np.testing.assert_array_equal(det1, det2)
  drop1, _ = m(x, dropout_key=jax.random.key(1))
  drop2, _ = m(x, dropout_key=jax.random.key(1))
  drop3, _ = m(x, dropout_key=jax.random.key(2))
  np.testing.assert_array_equal(drop1, drop2)
  assert not np.allclose(drop1, det1) and not np.allclose(drop1, drop3)

  def loss(model):
    return jnp.mean(model(x)[0] ** 2)

  rm = Llama(dataclasses.replace(CFG, remat="full"), rngs=nnx.Rngs(0))
  plain = Llama(CFG, rngs=nnx.Rngs(0))
  grads = nnx.jit(nnx.grad(loss))
  g_remat, g_plain = grads(rm), grads(plain)
  for a, b in zip(jax.tree.leaves(g_remat), jax.tree.leaves(g_plain)):
    # Recomputation reorders float sums, so agreement is to rounding, not bitwise.
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(np.max(np.abs(b))))


def test_unrolled_scan_keeps_logits_and_gradients():
  # ModelConfig.scan_unroll only changes how XLA lays out the layer loop, never the math.
  x = _tokens(2, 8)

  def loss(model):
    return jnp.mean(model(x)[0] ** 2)

  rolled = Llama(CFG, rngs=nnx.Rngs(0))
  unrolled = Llama(dataclasses.replace(CFG, scan_unroll=CFG.num_layers), rngs=nnx.Rngs(0))
  np.testing.assert_allclose(unrolled(x)[0], rolled(x)[0], rtol=0, atol=1e-5)
  grads = nnx.jit(nnx.grad(loss))
  for a, b in zip(jax.tree.leaves(grads(unrolled)), jax.tree.leaves(grads(rolled))):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(np.max(np.abs(b))))
  with pytest.raises(ConfigError, match="scan_unroll"):
    dataclasses.replace(CFG, scan_unroll=0)
  with pytest.raises(ConfigError, match="loss_chunk"):
    dataclasses.replace(CFG, loss_chunk=-1)


def test_tied_embeddings_have_no_head():
  m = Llama(dataclasses.replace(CFG, tie_word_embeddings=True), rngs=nnx.Rngs(0))
  assert not hasattr(m, "lm_head")
  assert m(_tokens(1, 3))[0].shape == (1, 3, CFG.vocab_size)


@pytest.mark.parametrize("equation,x_shape,w_shape", [
    ("btd,dnh->btnh", (2, 5, 8), (8, 3, 4)),   # q/k/v projections
    ("btnh,nhd->btd", (2, 5, 3, 4), (3, 4, 8)),  # o_proj: two contracted axes
    ("btd,df->btf", (2, 5, 8), (8, 6)),
    ("btd,fd->btf", (2, 5, 8), (6, 8)),          # not a trailing/leading contraction: the einsum fallback
])
def test_project_einsum_is_einsum(equation, x_shape, w_shape):
  kx, kw = jax.random.split(jax.random.PRNGKey(0))
  x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
  np.testing.assert_allclose(project_einsum(equation, x, w), jnp.einsum(equation, x, w), rtol=1e-5, atol=1e-5)
  gx, gw = jax.grad(lambda x, w: jnp.sum(jnp.sin(project_einsum(equation, x, w))), argnums=(0, 1))(x, w)
  ex, ew = jax.grad(lambda x, w: jnp.sum(jnp.sin(jnp.einsum(equation, x, w))), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(gx, ex, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gw, ew, rtol=1e-5, atol=1e-5)

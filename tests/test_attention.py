"""The attention implementations agree with the reference (`xla`) in values and gradients: packed segments,
GQA, left-padded rows and the shared prefix; `splash` runs Pallas's TPU kernel in interpret mode here. The
model with each implementation gives xla's logits and train-step gradients. Tolerances: DESIGN.md's 1e-5
relative for float32."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hb_jax.config import ConfigError, ModelConfig
from hb_jax.model import attention as A
from hb_jax.model.llama import Llama, init_cache
from flax import nnx

RTOL = 1e-5


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _case(t=40, prefix_len=0, b=3, k=2, g=3, h=16, seed=0):
  """Queries and keys of `b` rows: two packed segments; left padding (7 pad tokens, segment 0); plain rows.
  With a prefix, the rows' positions continue after it."""
  ks = jax.random.split(jax.random.key(seed), 6)
  q = jax.random.normal(ks[0], (b, t, k, g, h)) / 4
  keys, values = jax.random.normal(ks[1], (b, k, t, h)), jax.random.normal(ks[2], (b, k, t, h))
  seg = np.ones((b, t), np.int32)
  pos = np.tile(np.arange(t), (b, 1))
  seg[0, 25:], pos[0, 25:] = 2, np.arange(t - 25)
  seg[1, :7], pos[1, :7], pos[1, 7:] = 0, 0, np.arange(t - 7)  # rows from 2 on: one plain sequence
  pos = jnp.asarray(pos + prefix_len)
  seg = jnp.asarray(seg)
  prefix = None
  if prefix_len:
    prefix = A.Source(jax.random.normal(ks[3], (k, prefix_len, h)), jax.random.normal(ks[4], (k, prefix_len, h)),
                      jnp.arange(prefix_len), jnp.ones((prefix_len,), jnp.int32).at[-3:].set(0))  # 3 pad slots
  weights = jax.random.normal(ks[5], q.shape) * (seg > 0)[:, :, None, None, None]  # real rows only
  return q, A.Source(keys, values, pos, seg), prefix, weights


IMPLS = [("chunked", dict(block_q=16, block_kv=8)), ("chunked", {}), ("splash", {})]


@pytest.mark.parametrize("impl, blocks", IMPLS)
@pytest.mark.parametrize("prefix_len", [0, 24])
def test_values_and_gradients_equal_xla(impl, blocks, prefix_len):
  q, own, prefix, w = _case(prefix_len=prefix_len)

  def loss(impl, q, k, v, pk, pv, **kw):
    pre = None if prefix is None else prefix._replace(k=pk, v=pv)
    return (A.attend(q, own.pos, own.seg, own._replace(k=k, v=v), pre, impl=impl, **kw) * w).sum()

  args = (q, own.k, own.v) + ((prefix.k, prefix.v) if prefix else (None, None))
  real = w != 0
  got = jax.jit(lambda q: A.attend(q, own.pos, own.seg, own, prefix, impl=impl, **blocks))(q)
  want = A.attend(q, own.pos, own.seg, own, prefix, impl="xla")
  assert got.shape == want.shape and got.dtype == want.dtype
  assert _rel(jnp.where(real, got, 0), jnp.where(real, want, 0)) < RTOL
  if impl == "splash" and prefix is not None:
    return  # splash's kernel has no gradient for its log-sum-exp output: inference only (docs/attention.md)
  argnums = (1, 2, 3) + ((4, 5) if prefix else ())
  g_got = jax.jit(jax.grad(lambda *a: loss(impl, *a, **blocks), argnums=[i - 1 for i in argnums]))(*args)
  g_want = jax.jit(jax.grad(lambda *a: loss("xla", *a), argnums=[i - 1 for i in argnums]))(*args)
  for name, x, y in zip(("q", "k", "v", "prefix k", "prefix v"), g_got, g_want):
    assert _rel(x, y) < RTOL, name


def test_chunked_keeps_no_full_score_matrix():
  """The point of the blockwise path: its gradient program's temporaries grow with T, not with T x S."""
  def temp_bytes(impl, t):
    q, own, _, w = _case(t=t)
    f = jax.jit(jax.grad(lambda q: (A.attend(q, own.pos, own.seg, own, impl=impl, block_q=128, block_kv=128)
                                    * w).sum() if impl == "chunked" else
                         (A.attend(q, own.pos, own.seg, own, impl=impl) * w).sum()))
    return f.lower(q).compile().memory_analysis().temp_size_in_bytes

  scores = 3 * 2 * 3 * 512 * 512 * 4  # B x K x G x T x S float32 at T = 512
  xla = {t: temp_bytes("xla", t) for t in (256, 512)}
  chunked = {t: temp_bytes("chunked", t) for t in (256, 512)}
  assert xla[512] > scores and xla[512] / xla[256] > 3.5  # quadratic in T
  assert chunked[512] < scores / 3 and chunked[512] / chunked[256] < 2.5  # linear in T


def test_resolve_picks_by_backend_and_says_why():
  shape = (2, 512, 8, 4, 128)
  kw = dict(q_shape=shape, kv_len=512, dtype=jnp.bfloat16)
  assert A.resolve("auto", cached=False, backend="tpu", **kw) == "splash"
  assert A.resolve("auto", cached=True, backend="tpu", **kw) == "xla"  # decode: small scores
  assert A.resolve("auto", cached=False, backend="gpu", **kw) == "cudnn"
  assert A.resolve("auto", cached=False, backend="cpu", **kw) == "xla"
  big = dict(kw, q_shape=(8, 8192, 8, 4, 128), kv_len=8192)
  assert A.resolve("auto", cached=False, backend="cpu", **big) == "chunked"
  assert A.resolve("splash", cached=True, backend="tpu", **kw) == "xla"
  long_cache = dict(kw, q_shape=(64, 1, 8, 4, 128), kv_len=4096)  # a decode step over a long cache
  for choice, backend in (("auto", "gpu"), ("auto", "tpu"), ("chunked", "cpu"), ("splash", "tpu")):
    assert A.resolve(choice, cached=True, backend=backend, **long_cache) == "ragged"
  assert A.resolve("auto", cached=True, backend="cpu", **long_cache) == "xla"  # slices copy on CPU
  assert A.resolve("chunked", cached=True, backend="cpu", **kw) == "ragged"
  assert A.resolve("xla", cached=True, backend="cpu", **long_cache) == "xla"
  decode_7b = dict(q_shape=(64, 1, 32, 1, 128), kv_len=1280, dtype=jnp.bfloat16, cached=True, page_size=128)
  assert A.resolve("auto", backend="tpu", **decode_7b) == "paged_tpu"  # ragged_paged_attention
  assert A.resolve("auto", backend="tpu", prefix=True, **decode_7b) == "ragged"  # the kernel has no lse
  assert A.resolve("auto", backend="cpu", **decode_7b) == "ragged"
  assert A.resolve("xla", backend="tpu", **decode_7b) == "xla"
  smollm2 = dict(decode_7b, q_shape=(64, 1, 3, 3, 64))  # head_dim 64, 3 KV heads: not the kernel's
  assert A.resolve("auto", backend="tpu", **smollm2) == "ragged"
  assert A.resolve("cudnn", cached=False, backend="cpu", **kw) == "chunked"
  assert A.resolve("cudnn", cached=False, backend="gpu", **dict(kw, dtype=jnp.float32)) == "chunked"
  with pytest.raises(ValueError, match="model.attention: expected one of"):
    A.resolve("flash", cached=False, backend="cpu", **kw)
  with pytest.raises(ConfigError, match="model.attention must be one of"):
    ModelConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, attention="flash")


def test_model_with_each_implementation_gives_xla_logits_and_gradients():
  cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                    max_position_embeddings=256)
  tokens = jax.random.randint(jax.random.key(1), (2, 40), 0, 64)
  seg = jnp.ones((2, 40), jnp.int32).at[0, 30:].set(2)
  pos = jnp.broadcast_to(jnp.arange(40), (2, 40)).at[0, 30:].set(jnp.arange(10))

  def run(attention):
    model = Llama(dataclasses.replace(cfg, attention=attention), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    def loss(params):
      logits, _ = nnx.merge(graphdef, params)(tokens, pos, seg)
      return jax.nn.log_softmax(logits).mean(), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, grads

  want, g_want = run("xla")
  got, g_got = run("chunked")
  assert _rel(got, want) < RTOL
  for x, y in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
    assert _rel(x, y) < 1e-4
  splash = Llama(dataclasses.replace(cfg, attention="splash"), rngs=nnx.Rngs(0))
  assert _rel(jax.jit(lambda t: splash(t, pos, seg)[0])(tokens), want) < RTOL
  # The cached path (prefill, then decode) is unchanged by the choice: splash falls back to xla there
  # (a cache of one RAGGED_BLOCK or less is read whole), and over a longer cache the ragged read is xla's.
  model = Llama(dataclasses.replace(cfg, attention="splash"), rngs=nnx.Rngs(0))
  ref = Llama(cfg, rngs=nnx.Rngs(0))
  a, _ = jax.jit(lambda t: model(t, cache=init_cache(cfg, 2, 48)))(tokens)
  b, _ = jax.jit(lambda t: ref(t, cache=init_cache(cfg, 2, 48)))(tokens)
  np.testing.assert_array_equal(a, b)
  slots = A.RAGGED_BLOCK + 40
  step = jax.jit(lambda m, t, p, c: m(t, p, cache=c))
  decoded = {}
  for attention in ("chunked", "xla"):
    m = Llama(dataclasses.replace(cfg, attention=attention), rngs=nnx.Rngs(0))
    logits, cache = step(m, tokens, pos, init_cache(cfg, 2, slots))
    for i in range(3):  # decode steps read the cache
      nxt, cache = step(m, tokens[:, i:i + 1], jnp.full((2, 1), 40 + i), cache)
      logits = jnp.concatenate([logits, nxt], axis=1)
    decoded[attention] = logits
  assert _rel(decoded["chunked"], decoded["xla"]) < RTOL


def _cache_case(live, t=1, s=50, b=3, k=2, g=3, h=16, seed=3):
  """A KV cache source of `s` slots whose row b holds live[b] filled slots (a left-padded prompt's 4 pad slots
  first, then its tokens; the new t queries are the last t of them) and garbage past them (segment 0)."""
  ks = jax.random.split(jax.random.key(seed), 3)
  live = np.asarray(live, np.int32)
  seg = (np.arange(s)[None] < live[:, None]).astype(np.int32)
  seg[:, :4] = 0
  pos = np.maximum(np.arange(s)[None] - 4, 0).repeat(b, 0) * seg
  q_pos = jnp.asarray(live[:, None] - 5 - np.arange(t)[::-1][None])
  src = A.Source(jax.random.normal(ks[0], (b, k, s, h)), jax.random.normal(ks[1], (b, k, s, h)), jnp.asarray(pos),
                 jnp.asarray(seg), jnp.asarray(live))
  return jax.random.normal(ks[2], (b, t, k, g, h)) / 4, q_pos, jnp.ones((b, t), jnp.int32), src


@pytest.mark.parametrize("t, prefix_len", [(1, 0), (1, 24), (6, 0)])
def test_ragged_cache_read_equals_xla(t, prefix_len):
  """The decode path reads blocks up to the longest live row only; 50 slots in blocks of 16 end with a
  clamped block (slots 34..49) whose first slots an earlier block already read."""
  q, q_pos, q_seg, src = _cache_case([11, 50, 23], t=t)
  prefix = _case(prefix_len=prefix_len)[2] if prefix_len else None
  if prefix is not None:
    q_pos = q_pos + prefix_len
    src = src._replace(pos=src.pos + prefix_len * (src.seg > 0))
  got = jax.jit(lambda q: A.attend(q, q_pos, q_seg, src, prefix, impl="ragged", block_kv=16))(q)
  assert _rel(got, A.attend(q, q_pos, q_seg, src, prefix, impl="xla")) < RTOL


def test_ragged_rows_do_not_depend_on_batch_mates():
  """A row's output is bitwise the same whether the loop stops at its own blocks or runs on for a longer
  batch-mate: blocks it cannot see are exact no-ops."""
  q, q_pos, q_seg, src = _cache_case([9, 50, 23])
  read = jax.jit(lambda q, src: A.attend(q, q_pos, q_seg, src, impl="ragged", block_kv=16))
  alone = read(q, src._replace(live=src.live.at[1:].set(9)))  # every row within the first block
  np.testing.assert_array_equal(read(q, src)[0], alone[0])


def test_attention_is_not_written_to_model_json():
  cfg = ModelConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, attention="chunked")
  assert "attention" not in cfg.to_json()
  assert ModelConfig.from_json(cfg.to_json()).attention == "auto"


def test_splash_per_device_under_a_mesh_equals_xla():
  """Under a data x fsdp x tensor mesh the kernel runs per device (shard_map): rows over the batch axes,
  heads over 'tensor'."""
  from hb_jax.config import MeshConfig
  from hb_jax.parallel import make_mesh

  q, own, _, w = _case(b=4, k=2, g=2)
  with jax.set_mesh(make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))):
    out = lambda impl: jax.jit(lambda q: A.attend(q, own.pos, own.seg, own, impl=impl) * (w != 0))(q)
    grad = lambda impl: jax.jit(jax.grad(lambda q: (A.attend(q, own.pos, own.seg, own, impl=impl) * w).sum()))(q)
    assert _rel(out("splash"), out("xla")) < RTOL and _rel(grad("splash"), grad("xla")) < RTOL

"""The LLaMA network in Flax NNX.

Parameter names follow Hugging Face (`embed_tokens`, `layers.self_attn.q_proj`, ...) and RoPE uses HF's
rotate-half layout, so converting a HF checkpoint is a transpose and a reshape, never a permutation.
Projection kernels keep their head axis explicit (`q_proj.kernel: [embed, heads, head_dim]`) so every
contraction reads as an einsum over named axes.

The layers are stacked along a leading `layers` axis and applied with `jax.lax.scan`: compile time does not
grow with depth (80 layers compile like 1), and the stacked layout is what FSDP shards and Orbax saves.
A forward with a KV cache (prefill and decode) runs the layers unrolled instead, each on its own weight slice
and its own K/V buffers (`init_cache`), which each layer updates in place. The one scanned forward with a
cache, a shared prefix's (`prefix_cache`), carries the stacked cache in the scan's carry, not its xs/ys:
as xs/ys, XLA would rebuild (and copy) the whole cache on every call.

Attention masking is one rule for training, packing, left padding and the KV cache: a query sees a key
iff they share a segment id and the key's position is not after the query's. Segment id 0 marks padding.

A shared prefix (one prompt head that every row starts with, e.g. the curation rubric) can be passed as a
batch-1 KV cache: each row attends to it and to its own keys under one softmax over both, so the prefix is
neither recomputed nor copied per row.

The attention itself (the mask rule, the two-source softmax, and the implementations `model.attention`
chooses among: xla, chunked, splash, cudnn) is hb_jax.model.attention.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from hb_jax.config import ModelConfig
from hb_jax.model import attention
from hb_jax.model.kv_cache import KVCache, PagedKVCache, stored, write_layer_rows, write_pages
from hb_jax.parallel import constrain, target_platform

Array = jax.Array


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
  """The matmul dtype: bfloat16 on accelerators when cfg.dtype == 'auto', float32 on CPU. The accelerator is
  the one the program is built for: the mesh set with `jax.set_mesh` (a TPU pod's, compiled ahead of time on
  a CPU machine by hb_jax.preflight), else this process's default backend."""
  if cfg.dtype == "auto":
    return jnp.float32 if target_platform() == "cpu" else jnp.bfloat16
  return jnp.dtype(cfg.dtype)


def init_cache(cfg: ModelConfig, batch: int, slots: int, dtype=None) -> KVCache:
  """An empty KV cache to run the model with (Llama(..., cache=)): one K and one V buffer per layer
  [batch, kv_heads, slots, head_dim], in the compute dtype unless `dtype` says otherwise."""
  return KVCache.zeros(cfg.num_layers, batch, slots, cfg.num_kv_heads, cfg.head_dim,
                       compute_dtype(cfg) if dtype is None else dtype, per_layer=True)


def init_paged_cache(cfg: ModelConfig, batch: int, slots: int, page_size: int, num_pages: int | None = None,
                     dtype=None) -> PagedKVCache:
  """An empty paged KV cache: one pool of `num_pages` pages of `page_size` slots per layer (default: every
  row's `slots`, the worst case), no page assigned to any row yet (hb_jax.sample.scheduler.PageTable)."""
  per_row = -(-slots // page_size)
  return PagedKVCache.zeros(cfg.num_layers, batch, slots, cfg.num_kv_heads, cfg.head_dim, page_size,
                            batch * per_row if num_pages is None else num_pages,
                            compute_dtype(cfg) if dtype is None else dtype)


def _param(rngs: nnx.Rngs, shape, axes, dtype, *, fan_in: int | None = None, init: str = "normal"):
  """A parameter tagged with its logical axis names (parallel.py maps them to mesh axes)."""
  if init == "ones":
    value = jnp.ones(shape, dtype)
  else:
    std = 1.0 / math.sqrt(fan_in) if fan_in else 0.02
    value = (std * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape, jnp.float32)).astype(dtype)
  return nnx.Param(value, logical_axes=tuple(axes))


def project_einsum(equation: str, x: Array, w: Array) -> Array:
  """jnp.einsum(equation, x, w) for a projection: the trailing axes of x contract with the leading axes of w
  ("btd,dnh->btnh", "btnh,nhd->btd"). It runs as one 2-D matmul over the flattened axes: XLA:CPU turned the
  3-D form's weight gradient (a contraction over both b and t) into transposed copies, and the 2-D form made
  the 58M-parameter train step 5-7% faster (bench/train.py). Other equations go to jnp.einsum."""
  lhs, rest = equation.split(",")
  rhs, out = rest.split("->")
  n = sum(1 for c in lhs if c in rhs and c not in out)
  if n == 0 or lhs[-n:] != rhs[:n] or out != lhs[:-n] + rhs[n:]:
    return jnp.einsum(equation, x, w)
  y = x.reshape(-1, math.prod(x.shape[-n:])) @ w.reshape(math.prod(w.shape[:n]), -1)
  return y.reshape(*x.shape[:-n], *w.shape[n:])


class Projection(nnx.Module):
  """A bias-free linear map whose kernel keeps named axes; applied with an explicit einsum."""

  def __init__(self, shape, axes, param_dtype, *, fan_in: int, rngs: nnx.Rngs):
    self.kernel = _param(rngs, shape, axes, param_dtype, fan_in=fan_in)

  def __call__(self, x: Array, equation: str) -> Array:
    return project_einsum(equation, x, self.kernel[...].astype(x.dtype))


class RMSNorm(nnx.Module):
  """y = w * x / sqrt(mean(x^2) + eps), computed in float32."""

  def __init__(self, dim: int, eps: float, param_dtype, *, rngs: nnx.Rngs):
    self.eps = eps
    self.weight = _param(rngs, (dim,), ("norm",), param_dtype, init="ones")

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (self.weight[...].astype(jnp.float32) * normed).astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> Array:
  """Inverse frequencies theta^(-2i/d), with LLaMA-3.1's low/high frequency rescaling when configured."""
  d = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  s = cfg.rope_scaling
  if s is None:
    return inv_freq
  wavelen = 2 * math.pi / inv_freq
  low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
  high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
  smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
      s.high_freq_factor - s.low_freq_factor)
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(is_medium, smoothed, scaled)


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
  """Rotate-half RoPE. x: [B, T, N, D], positions: [B, T]."""
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, D]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def dropout(x: Array, rate: float, key: Array | None) -> Array:
  """Inverted dropout; identity when key is None (inference) or rate is 0."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Attention(nnx.Module):
  """Grouped-query attention: heads = kv_heads x groups; K/V are shared within a group."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, h, k, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    pd = jnp.dtype(cfg.param_dtype)
    self.q_proj = Projection((d, h, hd), ("embed", "heads", "head_dim"), pd, fan_in=d, rngs=rngs)
    self.k_proj = Projection((d, k, hd), ("embed", "kv_heads", "head_dim"), pd, fan_in=d, rngs=rngs)
    self.v_proj = Projection((d, k, hd), ("embed", "kv_heads", "head_dim"), pd, fan_in=d, rngs=rngs)
    self.o_proj = Projection((h, hd, d), ("heads", "head_dim", "embed"), pd, fan_in=h * hd, rngs=rngs)
    self.impl = cfg.attention  # a runtime choice (hb_jax.model.attention.resolve), static in the graph

  def __call__(self, x: Array, positions: Array, segment_ids: Array, inv_freq: Array,
               cache_kv: tuple[Array, Array] | None, layer: Array | None, cache_meta: KVCache | None,
               prefix_kv: tuple[Array, Array] | None = None, prefix_meta: KVCache | None = None):
    """cache_kv: the whole stacked (k, v) cache [layers, B, kv_heads, S, head_dim] (or None); this layer
    writes its rows at [layer, b, :, index[b]:index[b]+T] and attends over its own slice. With layer None,
    cache_kv is this layer's own (k, v) [B, kv_heads, S, head_dim] (the unrolled loop). With a PagedKVCache
    as cache_meta, cache_kv is this layer's (pages,): the T new tokens go to the rows' pages; one token per row
    (decode) then reads the row's pages, several (a prefill, into rows that start empty) their own keys.
    prefix_kv: this layer's shared-prefix (k, v) [kv_heads, P, head_dim], attended by every row."""
    dt = x.dtype
    q = self.q_proj(x, "btd,dnh->btnh")
    k = self.k_proj(x, "btd,dkh->btkh")
    v = self.v_proj(x, "btd,dkh->btkh")
    q = constrain(apply_rope(q, positions, inv_freq), ("batch", "length", "act_heads", None))
    k = apply_rope(k, positions, inv_freq)

    b, t, n, hd = q.shape
    page_size = 0
    if isinstance(cache_meta, PagedKVCache):
      pages = write_pages(cache_kv[0], k, v, cache_meta.page_table, cache_meta.index, segment_ids)
      cache_kv = (pages,)
    if cache_kv is None or (isinstance(cache_meta, PagedKVCache) and t > 1):
      # Keys/values as [B, kv_heads, S, head_dim], the cache's layout, so one einsum serves both paths.
      # A paged cache's prefill (hb_jax.sample.programs.refill) fills rows that start empty: its queries see
      # their own keys (and a prefix), what the rows' pages now hold.
      keys, values = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
      kv_pos, kv_seg = positions, segment_ids
      live = None
    elif isinstance(cache_meta, PagedKVCache):
      page_size = cache_meta.page_size
      live = cache_meta.index + t
      own = attention.PagedSource(cache_kv[0], cache_meta.page_table, cache_meta.positions,
                                  cache_meta.segment_ids, live)
    else:
      cache_k, cache_v = cache_kv
      cache_k = write_layer_rows(cache_k, k.astype(cache_k.dtype), layer, cache_meta.index)
      cache_v = write_layer_rows(cache_v, v.astype(cache_v.dtype), layer, cache_meta.index)
      cache_kv = (cache_k, cache_v)
      if layer is None:
        keys, values = cache_k.astype(dt), cache_v.astype(dt)
      else:
        keys = jax.lax.dynamic_index_in_dim(cache_k, layer, 0, keepdims=False).astype(dt)
        values = jax.lax.dynamic_index_in_dim(cache_v, layer, 0, keepdims=False).astype(dt)
      kv_pos, kv_seg = cache_meta.positions, cache_meta.segment_ids
      live = cache_meta.index + x.shape[1]  # this call's tokens included

    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, n // kv_heads, hd) / jnp.asarray(math.sqrt(hd), dt)
    prefix = None
    if prefix_kv is not None:
      prefix = attention.Source(*(a.astype(dt) for a in prefix_kv), prefix_meta.positions.reshape(-1),
                                prefix_meta.segment_ids.reshape(-1))
    if not page_size:
      own = attention.Source(keys, values, kv_pos, kv_seg, live)
    impl = attention.resolve(self.impl, q_shape=q.shape, kv_len=own.pos.shape[-1], dtype=dt,
                             cached=live is not None, page_size=page_size, prefix=prefix is not None)
    out = attention.attend(q, positions, segment_ids, own, prefix, impl=impl)
    y = self.o_proj(out.reshape(b, t, n, hd), "btnh,nhd->btd")
    return y, cache_kv


class MLP(nnx.Module):
  """SwiGLU: down(silu(x W_gate) * (x W_up))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.intermediate_size
    pd = jnp.dtype(cfg.param_dtype)
    self.gate_proj = Projection((d, f), ("embed", "mlp"), pd, fan_in=d, rngs=rngs)
    self.up_proj = Projection((d, f), ("embed", "mlp"), pd, fan_in=d, rngs=rngs)
    self.down_proj = Projection((f, d), ("mlp", "embed"), pd, fan_in=f, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    gate = self.gate_proj(x, "btd,df->btf")
    up = self.up_proj(x, "btd,df->btf")
    hidden = constrain(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
    return self.down_proj(hidden, "btf,fd->btd")


class DecoderLayer(nnx.Module):
  """Pre-norm block: x + Attn(norm(x)), then + MLP(norm(x)); residual dropout on both branches."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.dropout_rate = cfg.dropout_rate
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd, rngs=rngs)
    self.self_attn = Attention(cfg, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x, positions, segment_ids, inv_freq, cache_kv, layer, cache_meta, dropout_key,
               prefix_kv=None, prefix_meta=None):
    keys = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
    attn, cache_kv = self.self_attn(self.input_layernorm(x), positions, segment_ids, inv_freq, cache_kv,
                                    layer, cache_meta, prefix_kv, prefix_meta)
    x = x + dropout(attn, self.dropout_rate, keys[0])
    x = x + dropout(self.mlp(self.post_attention_layernorm(x)), self.dropout_rate, keys[1])
    return constrain(x, ("batch", "length", "act_embed")), cache_kv


def _stacked_layers(cfg: ModelConfig, rngs: nnx.Rngs) -> DecoderLayer:
  """num_layers DecoderLayers with their parameters stacked on a leading 'layers' axis."""
  keys = jax.random.split(rngs.params(), cfg.num_layers)

  def one_layer_state(key):
    return nnx.split(DecoderLayer(cfg, rngs=nnx.Rngs(params=key)))[1]

  graphdef = _layer_graphdef(cfg)
  state = jax.vmap(one_layer_state)(keys)
  layers = nnx.merge(graphdef, state)
  for _, var in nnx.iter_graph(layers):
    if isinstance(var, nnx.Param):
      var.set_metadata("logical_axes", ("layers",) + tuple(var.get_metadata()["logical_axes"]))
  return layers


@functools.lru_cache(maxsize=16)
def _layer_graphdef(cfg: ModelConfig) -> nnx.GraphDef:
  # Memoised per (frozen, hashable) config: tracing the initialisers costs ~0.05 s, on every Llama(...).
  return nnx.graphdef(nnx.eval_shape(lambda: DecoderLayer(cfg, rngs=nnx.Rngs(0))))


_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Embedding(nnx.Module):
  """Token embedding table [vocab, embed]."""

  def __init__(self, vocab_size: int, dim: int, param_dtype, *, rngs: nnx.Rngs):
    self.embedding = _param(rngs, (vocab_size, dim), ("vocab", "embed"), param_dtype)

  def __call__(self, tokens: Array) -> Array:
    return jnp.take(self.embedding[...], tokens, axis=0)


class Llama(nnx.Module):
  """LLaMA decoder-only LM: logits = head(norm(layers(embed(tokens))))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = jnp.dtype(cfg.param_dtype)
    self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, pd, rngs=rngs)
    self.layers = _stacked_layers(cfg, rngs)
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd, rngs=rngs)
    if not cfg.tie_word_embeddings:
      self.lm_head = Projection((cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pd,
                                fan_in=cfg.hidden_size, rngs=rngs)

  def __call__(self, tokens: Array, positions: Array | None = None, segment_ids: Array | None = None,
               *, cache: KVCache | None = None, prefix: KVCache | None = None,
               dropout_key: Array | None = None, return_hidden: bool = False,
               blocks: list[DecoderLayer] | None = None) -> tuple[Array, KVCache | None]:
    """tokens, positions, segment_ids: int32[B, T]. Returns (float32 logits [B, T, V], updated cache).

    Defaults: positions 0..T-1, one segment per row. With a cache (`init_cache`), this call's tokens are
    written at `cache.index` (per row) and attend to everything already in the cache. With a paged cache
    (`init_paged_cache`, pages assigned in its table), one token per row does the same; several tokens are a
    prefill into rows that must start empty (they attend to each other, not to what the rows held). With a prefix (a
    batch-1 cache of a shared prompt head, `prefix_cache`), every row also attends to it; the rows' positions
    continue after it.

    The layer loop is the model's choice, not the caller's. With a cache (prefill and decode) the layers run
    as an unrolled loop, each on its own slice of the weights and its own K/V buffers: a scanned loop slices
    (copies) every layer's weights and cache rows at every step, which dominated the decode step on CPU.
    Without one (training, scoring, logits) they run as the scan, whose compile time does not grow with depth.
    `blocks` (this model's `layer_blocks()`) is for a caller that runs the cached path many times in one
    program, the decode loop: it slices the weights once, outside its loop, instead of at every call.
    """
    if cache is not None and not cache.per_layer:
      raise ValueError("Llama: a KV cache holds one K and one V array per layer (llama.init_cache), found "
                       f"stacked arrays of shape {tuple(cache.k.shape)}")
    if blocks is not None and cache is None:
      raise ValueError("Llama(blocks=...): the per-layer blocks are for the cached path; pass a cache too")
    h, new_cache = self._forward(tokens, positions, segment_ids, cache, prefix, dropout_key,
                                 unrolled=cache is not None, blocks=blocks)
    return (h if return_hidden else self.project(h)), new_cache

  def prefix_cache(self, tokens_1p: Array, positions_1p: Array, segments_1p: Array) -> KVCache:
    """The K/V a shared prompt head leaves ([layers, 1, kv_heads, P, head_dim], stacked), for every row of a
    batch to attend to (the `prefix` argument). Computed once per batch plan, never inside a loop, so it
    runs the scan: compile time flat in depth and no per-layer weight copies."""
    c = self.cfg
    cache = KVCache.zeros(c.num_layers, tokens_1p.shape[0], tokens_1p.shape[1], c.num_kv_heads, c.head_dim,
                          compute_dtype(c))
    return self._forward(tokens_1p, positions_1p, segments_1p, cache, None, None, unrolled=False)[1]

  def _forward(self, tokens, positions, segment_ids, cache, prefix, dropout_key, *, unrolled: bool,
               blocks=None) -> tuple[Array, KVCache | None]:
    """(final normed hidden states [B, T, d], updated cache) through the unrolled or the scanned layer loop."""
    cfg = self.cfg
    b, t = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if segment_ids is None:
      segment_ids = jnp.ones((b, t), jnp.int32)
    dt = compute_dtype(cfg)
    inv_freq = rope_inv_freq(cfg)

    x = self.embed_tokens(tokens).astype(dt)
    x = constrain(x, ("batch", "length", "act_embed"))

    cache_meta = None
    if cache is not None:
      cache_meta = cache.advance(positions, segment_ids)
    layer_keys = None if dropout_key is None else jax.random.split(dropout_key, cfg.num_layers)

    if unrolled:
      x, cache_kv = self._unrolled(blocks or self.layer_blocks(), x, positions, segment_ids, inv_freq, cache,
                                   cache_meta, prefix, layer_keys)
    else:
      x, cache_kv = self._scanned(x, positions, segment_ids, inv_freq, cache, cache_meta, prefix, layer_keys)

    h = self.norm(x)
    new_cache = None
    if cache is not None:
      if isinstance(cache, PagedKVCache):
        new_cache = cache_meta.replace(pages=cache_kv[0]).moved(stored(segment_ids))
      else:
        new_cache = cache_meta.replace(k=cache_kv[0], v=cache_kv[1]).moved(t)
    return h, new_cache

  def layer_blocks(self) -> list[DecoderLayer]:
    """The stacked layers as num_layers separate modules (each holding its slice of the parameters)."""
    graphdef, state = nnx.split(self.layers)
    return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(self.cfg.num_layers)]

  def _unrolled(self, blocks, x, positions, segment_ids, inv_freq, cache, cache_meta, prefix, layer_keys):
    # A prefix's layer i is prefix.k[i] in either layout; the sampler passes it per layer (unstacked once),
    # since slicing a stacked prefix here would copy it at every decode step.
    layers_kv = []
    for i, block in enumerate(blocks):
      kv = None
      if cache is not None:
        kv = (cache.pages[i],) if isinstance(cache, PagedKVCache) else (cache.k[i], cache.v[i])
      pre = None if prefix is None else (prefix.k[i][0], prefix.v[i][0])
      key = None if layer_keys is None else layer_keys[i]
      x, kv = block(x, positions, segment_ids, inv_freq, kv, None, cache_meta, key, pre, prefix)
      layers_kv.append(kv)
    return x, (None if cache is None else tuple(zip(*layers_kv)))  # (ks, vs), or (pages,)

  def _scanned(self, x, positions, segment_ids, inv_freq, cache, cache_meta, prefix, layer_keys):
    cfg = self.cfg
    graphdef, layer_state = nnx.split(self.layers)

    def body(carry, xs):
      x, cache_kv = carry
      state_l, layer, key_l, prefix_l = xs
      block = nnx.merge(graphdef, state_l)
      return block(x, positions, segment_ids, inv_freq, cache_kv, layer, cache_meta, key_l, prefix_l,
                   prefix), None

    if cfg.remat != "none":
      body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
    cache_kv = None if cache is None else (cache.k, cache.v)
    layer_ids = jnp.arange(cfg.num_layers, dtype=jnp.int32)
    # The prefix is read-only, so its per-layer slices ([kv_heads, P, head_dim], batch 1 dropped) ride in xs.
    prefix_kv = None
    if prefix is not None:
      stack = (lambda a: jnp.stack(a)[:, 0]) if prefix.per_layer else (lambda a: a[:, 0])
      prefix_kv = (stack(prefix.k), stack(prefix.v))
    (x, cache_kv), _ = jax.lax.scan(body, (x, cache_kv), (layer_state, layer_ids, layer_keys, prefix_kv),
                                    unroll=min(cfg.scan_unroll, cfg.num_layers))
    return x, cache_kv

  def head_weight(self, dtype) -> Array:
    """The output head as [d, V] in `dtype` (the embedding, transposed, when they are tied)."""
    if self.cfg.tie_word_embeddings:
      return self.embed_tokens.embedding[...].astype(dtype).T
    return self.lm_head.kernel[...].astype(dtype)

  def project(self, h: Array) -> Array:
    """Final hidden states [B, T, d] -> float32 logits [B, T, V]."""
    logits = jnp.einsum("btd,dv->btv", h, self.head_weight(h.dtype), preferred_element_type=jnp.float32)
    return constrain(logits, ("batch", "length", "act_vocab"))



@functools.lru_cache(maxsize=16)
def _abstract_split(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
  return nnx.split(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))))


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, state) of Llama(cfg) with ShapeDtypeStructs for arrays (logical axes in the metadata),
  nothing allocated. Memoised per config: tracing every initialiser costs ~0.1 s, and one pipeline stage
  asks a dozen times (restore, shardings, the train step). The state is a fresh copy each call, so callers
  may fill it in (nnx.replace_by_pure_dict) without touching the memo. The params as a plain tree, and their
  shardings: hb_jax.parallel.abstract_params / param_shardings."""
  graphdef, state = _abstract_split(cfg)
  return graphdef, jax.tree.map(lambda leaf: leaf, state)

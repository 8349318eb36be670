"""The device programs of generation and scoring: jitted pure functions of (static settings, params, arrays).

Every compile-time setting is an explicit static argument (the model's `graphdef`, a `DecodeSpec`, batch and
slot counts, `score_block`), and everything else is an array, so the very programs the Sampler and the Scorer
run can be built from abstract inputs (jax.ShapeDtypeStruct) without weights and lowered elsewhere, e.g.

    programs.decode.lower(graphdef, params, state, rule, prefix, release_b, free_target, spec=spec)

with `state` from `jax.eval_shape(programs.init_state, cfg, batch, slots, max_new)`. The host side (which
rows to fill, when to stop decoding, stop strings) is hb_jax.sample.scheduler; nothing here reads the host.

  init_state     an empty DecodeState: batch rows of `slots` cache slots, all done
  prefill_prefix the KV of a prompt head every row shares, computed once at batch 1
  refill         prefills R prompts into chosen rows of a DecodeState and samples each one's first token
  decode         one jitted lax.while_loop: decodes until every row is done, `free_target` more rows are,
                 or spec.chunk_steps steps
  compact        gathers the live rows of a DecodeState into a smaller batch
  loglikelihood  teacher-forced sum of log p(target) per row, the vocabulary projected a block at a time
  next_token_logprobs  log p(candidate | row) at each row's last token

Layout of one row's cache (slots): [prompt, left-padded to its bucket | new tokens]. Every row has its own
write index and its own positions (continuing after the shared prefix), so left padding, the prefix, and rows
refilled mid-run all follow the model's one masking rule (same segment id, key position <= query position).
Real tokens have segment id 1, empty slots 0. A row's token at step t is drawn with fold_in(row key, t), so
its sample never depends on its batch-mates, refills, compaction or chunk boundaries.

`compilations`: each program counts its traces (= compiled programs) by name into the counter of the
`count_traces` block it is traced in; the jit caches are shared, so an engine counts what it compiled.
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from hb_jax.config import ModelConfig
from hb_jax.model.kv_cache import KVCache, PagedKVCache
from hb_jax.model.llama import init_cache, init_paged_cache
from hb_jax.parallel import SERVE_RULES, constrain, constrain_cache
from hb_jax.sample import plan
from hb_jax.sample.sampling import Sampling, row_keys_from_seeds, select_tokens

Array = jax.Array

RUNNING, FINISH_EOS, FINISH_LENGTH, FINISH_STOP, FINISH_RELEASED = 0, 1, 2, 3, 4

_TRACES: contextvars.ContextVar[collections.Counter | None] = contextvars.ContextVar("traces", default=None)


@contextlib.contextmanager
def count_traces(counter: collections.Counter):
  """Programs traced (compiled) inside this block add 1 to counter[their name]."""
  token = _TRACES.set(counter)
  try:
    yield counter
  finally:
    _TRACES.reset(token)


def _traced(name: str) -> None:
  counter = _TRACES.get()
  if counter is not None:
    counter[name] += 1


@struct.dataclass
class DecodeState:
  cache: KVCache  # one K/V buffer per layer (llama.init_cache)
  tokens: Array  # int32 [B]: the last sampled token, fed at the next step
  positions: Array  # int32 [B]: its RoPE position
  num_generated: Array  # int32 [B]
  done: Array  # bool [B]: finished or empty
  finish: Array  # int32 [B]: RUNNING or a FINISH_* code
  keys: Array  # uint32 [B, 2]: raw per-row PRNG key data
  out_tokens: Array  # int32 [B, M]
  out_logprobs: Array  # float32 [B, M]


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
  """Static (compile-time) decoding settings."""
  sampling: Sampling
  max_new_tokens: int
  chunk_steps: int = 64


@struct.dataclass
class StopRule:
  """End-of-row tokens and token stop sequences as arrays (changing them does not recompile)."""
  eos_e: Array  # int32 [E], -1 padded
  stops_nl: Array  # int32 [N, L], each sequence right-aligned, left-padded with -1 (matches anything)
  stop_len_n: Array  # int32 [N]

  @classmethod
  def make(cls, eos_ids: Sequence[int], stop_sequences: Sequence[Sequence[int]]) -> "StopRule":
    eos = np.full(plan.pow2_ceil(max(4, len(eos_ids))), -1, np.int32)
    eos[:len(eos_ids)] = eos_ids
    # Shapes are padded (at least 4 sequences of 8 tokens) so typical rules share one program.
    n = len(stop_sequences)
    longest = max((len(q) for q in stop_sequences), default=1)
    stops = np.full((plan.pow2_ceil(max(4, n)), plan.pow2_ceil(max(8, longest))), -1, np.int32)
    lens = np.zeros(stops.shape[0], np.int32)
    for i, q in enumerate(stop_sequences):
      stops[i, stops.shape[1] - len(q):] = q
      lens[i] = len(q)
    lens[n:] = 1 << 30  # padding rows never match
    return cls(jnp.asarray(eos), jnp.asarray(stops), jnp.asarray(lens))


_ROW_FIELDS = ("tokens", "positions", "num_generated", "done", "finish", "keys", "out_tokens", "out_logprobs")


def _constrain_state(st: DecodeState) -> DecodeState:
  per_row = {f: constrain(getattr(st, f), ("batch",) + (None,) * (getattr(st, f).ndim - 1), SERVE_RULES)
             for f in _ROW_FIELDS}
  return st.replace(cache=constrain_cache(st.cache, SERVE_RULES), **per_row)


def finish_codes(tok_b: Array, out_bm: Array, num_gen_b: Array, rule: StopRule, max_new: int) -> Array:
  """FINISH_* code per row after appending tok_b (already written to out_bm; num_gen_b counts it)."""
  eos = jnp.any(tok_b[:, None] == rule.eos_e[None, :], axis=-1)
  stop = jnp.zeros_like(eos)
  n, padded_width = rule.stops_nl.shape
  # Only the last `width` tokens can be compared; a sequence longer than that never matches anyway
  # (num_gen <= max_new < its length), so its cut tail is harmless.
  width = min(padded_width, out_bm.shape[1])
  stops_nl = rule.stops_nl[:, padded_width - width:]
  if n:
    start_b = jnp.maximum(num_gen_b - width, 0)
    window_bl = jax.vmap(lambda row, s: jax.lax.dynamic_slice(row, (s,), (width,)))(out_bm, start_b)
    # A window that starts before the row's first token would be misaligned: shift its comparison by
    # requiring num_gen >= the sequence length and reading the right-aligned tail only.
    shift_b = jnp.maximum(width - num_gen_b, 0)
    window_bl = jax.vmap(lambda w, k: jnp.roll(w, k))(window_bl, shift_b)
    match_bnl = (window_bl[:, None, :] == stops_nl[None]) | (stops_nl[None] < 0)
    stop = jnp.any(jnp.all(match_bnl, axis=-1) & (num_gen_b[:, None] >= rule.stop_len_n[None]), axis=-1)
  length = num_gen_b >= max_new
  return jnp.where(eos, FINISH_EOS, jnp.where(stop, FINISH_STOP, jnp.where(length, FINISH_LENGTH, RUNNING)))


# --------------------------------------------------------------------------------------------- generation
@functools.partial(jax.jit, static_argnames=("cfg", "batch", "slots", "max_new", "page_size"))
def init_state(cfg: ModelConfig, batch: int, slots: int, max_new: int, page_size: int = 0) -> DecodeState:
  """An empty DecodeState: every row done, its cache empty (segment 0 everywhere). page_size > 0: a paged
  cache whose pool holds every row's worst case (batch x slots / page_size pages), no page assigned."""
  _traced("empty")
  zeros_b = jnp.zeros((batch,), jnp.int32)
  cache = init_paged_cache(cfg, batch, slots, page_size) if page_size else init_cache(cfg, batch, slots)
  return _constrain_state(DecodeState(
      cache=cache, tokens=zeros_b, positions=zeros_b, num_generated=zeros_b,
      done=jnp.ones((batch,), bool), finish=zeros_b, keys=jnp.zeros((batch, 2), jnp.uint32),
      out_tokens=jnp.zeros((batch, max_new), jnp.int32), out_logprobs=jnp.zeros((batch, max_new), jnp.float32)))


@functools.partial(jax.jit, static_argnames=("graphdef", "per_layer"))
def prefill_prefix(graphdef: nnx.GraphDef, params, tokens_1p: Array, positions_1p: Array, segments_1p: Array,
                   *, per_layer: bool) -> KVCache:
  """KV of a shared prefix (batch 1; hb_jax.sample.prefix.padded_prefix makes its arrays), computed once.
  per_layer: one K/V array per layer, as the decode loop reads it (slicing a stacked one there would copy it
  at every step); else stacked, as the scorer's scanned forward reads it."""
  _traced("prefix")
  cache = nnx.merge(graphdef, params).prefix_cache(tokens_1p, positions_1p, segments_1p)
  return cache.unstacked() if per_layer else cache


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"), donate_argnames=("state",))
def refill(graphdef: nnx.GraphDef, params, state: DecodeState, rule: StopRule, prefix: KVCache | None,
           tokens_rt: Array, positions_rt: Array, segments_rt: Array, seeds_r2: Array, rows_r: Array,
           table_rn: Array | None = None, *, spec: DecodeSpec) -> DecodeState:
  """Prefills R left-padded prompts into rows `rows_r` of `state` (row index B = padding, dropped) and samples
  each row's first token. The rows attend to the shared prefix KV, if any. seeds_r2: uint32 (a, b) per row,
  its key fold_in(PRNGKey(a), b). A paged cache: table_rn holds the pages each row got (PageTable), and the
  prompts' keys and values are written straight into them (a contiguous cache is prefilled as R fresh rows,
  then copied into the state's)."""
  _traced("refill")
  model = nnx.merge(graphdef, params)
  r = tokens_rt.shape[0]
  slots = state.cache.slots
  c = state.cache
  put = lambda dst, src: dst.at[rows_r].set(src, mode="drop")
  if isinstance(c, PagedKVCache):
    zeros_rs = jnp.zeros((r, slots), jnp.int32)
    fresh = c.replace(page_table=table_rn, positions=zeros_rs, segment_ids=zeros_rs, index=jnp.zeros((r,), jnp.int32))
  else:
    fresh = init_cache(model.cfg, r, slots)
  h_rtd, cache = model(tokens_rt, positions_rt, segments_rt, cache=fresh, prefix=prefix, return_hidden=True)
  logits_rv = model.project(h_rtd[:, -1:])[:, 0]  # left padding: every row's last token is at T-1
  keys_r2 = row_keys_from_seeds(seeds_r2)
  tok_r, lp_r = select_tokens(logits_rv, keys_r2, jnp.zeros((r,), jnp.int32), spec.sampling)
  out_rm = jnp.zeros((r, spec.max_new_tokens), jnp.int32).at[:, 0].set(tok_r)
  lp_rm = jnp.zeros((r, spec.max_new_tokens), jnp.float32).at[:, 0].set(lp_r)
  num_gen_r = jnp.ones((r,), jnp.int32)
  finish_r = finish_codes(tok_r, out_rm, num_gen_r, rule, spec.max_new_tokens)

  rows_meta = dict(positions=put(c.positions, cache.positions), segment_ids=put(c.segment_ids, cache.segment_ids),
                   index=put(c.index, cache.index))
  if isinstance(c, PagedKVCache):
    new_cache = c.replace(pages=cache.pages, page_table=put(c.page_table, table_rn), **rows_meta)
  else:
    new_cache = c.replace(k=tuple(map(put, c.k, cache.k)), v=tuple(map(put, c.v, cache.v)), **rows_meta)
  new = state.replace(
      cache=new_cache, tokens=put(state.tokens, tok_r),
      positions=put(state.positions, positions_rt[:, -1] + 1), num_generated=put(state.num_generated, num_gen_r),
      done=put(state.done, finish_r != RUNNING), finish=put(state.finish, finish_r),
      keys=put(state.keys, keys_r2), out_tokens=put(state.out_tokens, out_rm),
      out_logprobs=put(state.out_logprobs, lp_rm))
  return _constrain_state(new)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"), donate_argnames=("state",))
def decode(graphdef: nnx.GraphDef, params, state: DecodeState, rule: StopRule, prefix: KVCache | None,
           release_b: Array, free_target: Array, table_bn: Array | None = None, *, spec: DecodeSpec
           ) -> tuple[DecodeState, Array]:
  """Releases rows `release_b` (finish 'stop', as a stop string the host found), then decodes until every
  row is done, `free_target` more rows are done, or spec.chunk_steps steps. Returns (state, steps). A paged
  cache reads and writes the pages of table_bn (PageTable: enough for chunk_steps more tokens per running
  row; none for a row the host has freed, whose writes are then dropped)."""
  _traced("decode")
  model = nnx.merge(graphdef, params)
  if table_bn is not None:
    state = state.replace(cache=state.cache.replace(page_table=table_bn))
  blocks = model.layer_blocks()  # the per-layer weights, sliced here once, not at every step
  state = state.replace(finish=jnp.where(release_b & ~state.done, FINISH_RELEASED, state.finish),
                        done=state.done | release_b)
  done_at_start = state.done
  batch, max_new = state.out_tokens.shape
  rows_b = jnp.arange(batch)

  def cond(carry):
    st, step = carry
    newly_done = jnp.sum(st.done & ~done_at_start)
    return (step < spec.chunk_steps) & ~jnp.all(st.done) & (newly_done < free_target)

  def body(carry):
    st, step = carry
    active_b = ~st.done
    # Finished/empty rows still flow through the matmuls but write segment 0 and keep their index.
    logits_b1v, cache = model(st.tokens[:, None], st.positions[:, None], active_b.astype(jnp.int32)[:, None],
                              cache=st.cache, prefix=prefix, blocks=blocks)
    cache = cache.replace(index=jnp.where(active_b, cache.index, st.cache.index))
    tok_b, lp_b = select_tokens(logits_b1v[:, 0], st.keys, st.num_generated, spec.sampling)
    slot_b = jnp.where(active_b, st.num_generated, max_new)  # out of range: dropped
    out_bm = st.out_tokens.at[rows_b, slot_b].set(tok_b, mode="drop")
    lp_bm = st.out_logprobs.at[rows_b, slot_b].set(lp_b, mode="drop")
    num_gen_b = st.num_generated + active_b
    code_b = finish_codes(tok_b, out_bm, num_gen_b, rule, max_new)
    new = DecodeState(
        cache=cache, tokens=jnp.where(active_b, tok_b, st.tokens), positions=st.positions + active_b,
        num_generated=num_gen_b, done=st.done | (active_b & (code_b != RUNNING)),
        finish=jnp.where(active_b, code_b, st.finish), keys=st.keys, out_tokens=out_bm, out_logprobs=lp_bm)
    return _constrain_state(new), step + 1

  return jax.lax.while_loop(cond, body, (state, jnp.int32(0)))


@jax.jit
def compact(state: DecodeState, rows_c: Array, keep_c: Array) -> DecodeState:
  """The rows `rows_c` of state as a smaller batch C; rows with keep_c False become empty (done).
  A row's sample depends only on its own key and step count, so moving it changes nothing. A paged cache's
  pages stay where they are: only the page table's rows move."""
  _traced("compact")
  take = lambda a: a[rows_c]
  c = state.cache
  cache = c.map_kv(take).replace(positions=take(c.positions), segment_ids=take(c.segment_ids),
                                 index=take(c.index))
  rows = {f: take(getattr(state, f)) for f in _ROW_FIELDS if f != "done"}
  return _constrain_state(state.replace(cache=cache, done=take(state.done) | ~keep_c, **rows))


# ------------------------------------------------------------------------------------------------ scoring
def _hidden(model, prefix: KVCache | None, tokens_bt, positions_bt, segments_bt):
  """Final hidden states of the rows' tokens (the scanned forward); with a prefix they attend to it too."""
  tokens_bt = constrain(tokens_bt, ("batch", None), SERVE_RULES)
  h_btd, _ = model(tokens_bt, positions_bt, segments_bt, prefix=prefix, return_hidden=True)
  return h_btd


@functools.partial(jax.jit, static_argnames=("graphdef", "score_block"))
def loglikelihood(graphdef: nnx.GraphDef, params, prefix: KVCache | None, tokens_bt: Array, positions_bt: Array,
                  segments_bt: Array, targets_bt: Array, weights_bt: Array, *, score_block: int) -> Array:
  """sum_t weights[b, t] * log p(targets[b, t] | prefix + tokens[b, :t+1]) -> float32 [B]. The vocabulary is
  projected `score_block` positions at a time, so [B, T, V] logits never exist at once."""
  _traced("loglikelihood")
  model = nnx.merge(graphdef, params)
  h_btd = _hidden(model, prefix, tokens_bt, positions_bt, segments_bt)
  b, t, d = h_btd.shape
  block = min(score_block, t)
  if t % block:
    block = t
  n = t // block
  to_blocks = lambda x: jnp.moveaxis(x.reshape((b, n, block) + x.shape[2:]), 1, 0)

  def one_block(xs):
    h_bcd, tgt_bc, w_bc = xs
    logits_bcv = model.project(h_bcd)
    logz_bc = jax.nn.logsumexp(logits_bcv, axis=-1)
    picked_bc = jnp.take_along_axis(logits_bcv, tgt_bc[..., None], axis=-1)[..., 0]
    return jnp.sum(w_bc * (picked_bc - logz_bc), axis=-1)

  per_block_nb = jax.lax.map(one_block, (to_blocks(h_btd), to_blocks(targets_bt), to_blocks(weights_bt)))
  return jnp.sum(per_block_nb, axis=0)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def next_token_logprobs(graphdef: nnx.GraphDef, params, prefix: KVCache | None, tokens_bt: Array,
                        positions_bt: Array, segments_bt: Array, last_b: Array, candidates_c: Array) -> Array:
  """log p(candidate | prefix + tokens[b, :last[b]+1]) -> float32 [B, C] (full-vocabulary softmax)."""
  _traced("next_token")
  model = nnx.merge(graphdef, params)
  h_btd = _hidden(model, prefix, tokens_bt, positions_bt, segments_bt)
  h_b1d = jnp.take_along_axis(h_btd, last_b[:, None, None], axis=1)
  logp_bv = jax.nn.log_softmax(model.project(h_b1d)[:, 0], axis=-1)
  return jnp.take(logp_bv, candidates_c, axis=-1)

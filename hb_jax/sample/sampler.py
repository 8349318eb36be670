"""Batched generation with a KV cache: prefill in one pass, decode in one jitted `lax.while_loop`.

Layout of one row's cache (slots):  [prompt, left-padded to its bucket | new tokens].
A prompt head that every prompt shares (the curation rubric) is prefilled once into a separate batch-1 cache
that every row attends to (hb_jax.sample.prefix; the model combines the two under one softmax), so it is
neither recomputed nor copied per row. Every row has its own write index and its own positions (they
continue after the prefix), so left padding, the prefix, and rows refilled with a new prompt mid-run all
follow the model's one masking rule (same segment id, key position <= query position). Real tokens have
segment id 1, empty slots 0.

The host drives a short loop per length bucket ("continuous batching"):
  fill all rows (one prefill) -> decode until `min_refill` rows finish (or `chunk_steps`) -> hand out the
  finished rows -> prefill queued prompts straight into the freed rows -> decode again ...
and once the queue is empty, whenever at most half the rows are live they are gathered into the next
smaller batch bucket, so the tail of long outputs does not decode mostly empty rows.
Each jitted function is a pure function of (params, arrays); the model graph is merged once per trace, so
no Python object traversal runs per decode step. A row's token at step t is drawn with
fold_in(row key, t), so its sample never depends on its batch-mates, refills, or chunk boundaries.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import Mesh

from hb_jax.config import SampleConfig
from hb_jax.model.kv_cache import KVCache
from hb_jax.model.llama import Llama, compute_dtype
from hb_jax.parallel import SERVE_RULES, Rules, constrain, param_shardings, single_device_mesh
from hb_jax.sample import plan
from hb_jax.sample import prefix as prefix_kv
from hb_jax.sample.sampling import Sampling, row_keys_from_seeds, select_tokens

Array = jax.Array

RUNNING, FINISH_EOS, FINISH_LENGTH, FINISH_STOP, FINISH_RELEASED = 0, 1, 2, 3, 4
_REASONS = {FINISH_EOS: "eos", FINISH_LENGTH: "length", FINISH_STOP: "stop", FINISH_RELEASED: "stop"}


@struct.dataclass
class DecodeState:
  cache: KVCache
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


@dataclasses.dataclass
class Completion:
  tokens: np.ndarray  # int32: new tokens, EOS and stop sequences excluded
  logprobs: np.ndarray  # float32: log p(token | context) under the model, one per token
  finish_reason: str  # eos | length | stop
  num_decoded: int = -1  # tokens the row decoded for this result, EOS included (for utilisation)


def _constrain_state(st: DecodeState) -> DecodeState:
  c = st.cache
  kv_axes = ("batch", "kv_heads", None, "head_dim") if c.per_layer else ("layers", "batch", "kv_heads", None, "head_dim")
  cache = c.map_kv(lambda a: constrain(a, kv_axes, SERVE_RULES))
  cache = cache.replace(positions=constrain(c.positions, ("batch", None), SERVE_RULES),
                    segment_ids=constrain(c.segment_ids, ("batch", None), SERVE_RULES),
                    index=constrain(c.index, ("batch",), SERVE_RULES))
  per_row = {f: constrain(getattr(st, f), ("batch",) + (None,) * (getattr(st, f).ndim - 1), SERVE_RULES)
             for f in ("tokens", "positions", "num_generated", "done", "finish", "keys", "out_tokens",
                       "out_logprobs")}
  return st.replace(cache=cache, **per_row)


def _finish_codes(tok_b: Array, out_bm: Array, num_gen_b: Array, rule: StopRule, max_new: int) -> Array:
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


class Sampler:
  """Generation for one model on one mesh. `compilations` counts traces (= compiled programs) by name."""

  def __init__(self, model: Llama, mesh: Mesh | None = None, config: SampleConfig = SampleConfig(), *,
               rules: Rules = SERVE_RULES, detokenize: Callable[[Sequence[int]], str] | None = None,
               params=None):
    self.cfg = model.cfg
    self.config = config
    self.mesh = mesh or single_device_mesh()
    self.detokenize = detokenize
    self.graphdef, state = nnx.split(model)
    if params is None:
      with jax.set_mesh(self.mesh):
        params = jax.device_put(state, param_shardings(state, rules, self.mesh))
    self.params = params
    self.cache_dtype = compute_dtype(self.cfg)
    self.compilations: collections.Counter = collections.Counter()
    self.stats: collections.Counter = collections.Counter()
    self._empty = jax.jit(self._empty_impl, static_argnums=(0, 1, 2))
    self._prefix = jax.jit(self._prefix_impl)
    self._refill = jax.jit(self._refill_impl, static_argnames=("spec",), donate_argnames=("state",))
    self._decode = jax.jit(self._decode_impl, static_argnames=("spec",), donate_argnames=("state",))
    self._compact = jax.jit(self._compact_impl)

  # ----------------------------------------------------------------------------------------- jitted parts
  def _zeros_cache(self, batch: int, slots: int) -> KVCache:
    c = self.cfg
    return KVCache.zeros(c.num_layers, batch, slots, c.num_kv_heads, c.head_dim, self.cache_dtype,
                         per_layer=self.config.unroll_layers)

  def _model(self, params):
    """(model, its per-layer blocks or None): blocks are sliced here, outside any decode loop."""
    model = nnx.merge(self.graphdef, params)
    return model, (model.layer_blocks() if self.config.unroll_layers else None)

  def _empty_impl(self, batch: int, slots: int, max_new: int) -> DecodeState:
    self.compilations["empty"] += 1
    zeros_b = jnp.zeros((batch,), jnp.int32)
    return _constrain_state(DecodeState(
        cache=self._zeros_cache(batch, slots), tokens=zeros_b, positions=zeros_b, num_generated=zeros_b,
        done=jnp.ones((batch,), bool), finish=zeros_b, keys=jnp.zeros((batch, 2), jnp.uint32),
        out_tokens=jnp.zeros((batch, max_new), jnp.int32),
        out_logprobs=jnp.zeros((batch, max_new), jnp.float32)))

  def _prefix_impl(self, params, tokens_1p, positions_1p, segments_1p) -> KVCache:
    """KV of the shared prefix, computed once (batch 1)."""
    self.compilations["prefix"] += 1
    cache = prefix_kv.prefill(nnx.merge(self.graphdef, params), tokens_1p, positions_1p, segments_1p,
                              self.cache_dtype)
    return cache.unstacked() if self.config.unroll_layers else cache

  def _refill_impl(self, params, state: DecodeState, rule: StopRule, prefix: KVCache | None, tokens_rt,
                   positions_rt, segments_rt, seeds_r2, rows_r, *, spec: DecodeSpec) -> DecodeState:
    """Prefills R prompts into rows `rows_r` of `state` (row index B = padding, dropped) and samples each
    row's first token. The rows attend to the shared prefix KV, if any."""
    self.compilations["refill"] += 1
    model, blocks = self._model(params)
    r = tokens_rt.shape[0]
    batch, slots = state.cache.positions.shape
    h_rtd, cache = model(tokens_rt, positions_rt, segments_rt, cache=self._zeros_cache(r, slots), prefix=prefix,
                         return_hidden=True, blocks=blocks)
    logits_rv = model.project(h_rtd[:, -1:])[:, 0]  # left padding: every row's last token is at T-1
    keys_r2 = row_keys_from_seeds(seeds_r2)
    tok_r, lp_r = select_tokens(logits_rv, keys_r2, jnp.zeros((r,), jnp.int32), spec.sampling)
    out_rm = jnp.zeros((r, spec.max_new_tokens), jnp.int32).at[:, 0].set(tok_r)
    lp_rm = jnp.zeros((r, spec.max_new_tokens), jnp.float32).at[:, 0].set(lp_r)
    num_gen_r = jnp.ones((r,), jnp.int32)
    finish_r = _finish_codes(tok_r, out_rm, num_gen_r, rule, spec.max_new_tokens)

    put = lambda dst, src: dst.at[rows_r].set(src, mode="drop")
    c = state.cache
    if c.per_layer:
      k = tuple(put(dst, src) for dst, src in zip(c.k, cache.k))
      v = tuple(put(dst, src) for dst, src in zip(c.v, cache.v))
    else:
      k, v = (dst.at[:, rows_r].set(src, mode="drop") for dst, src in ((c.k, cache.k), (c.v, cache.v)))
    new_cache = c.replace(k=k, v=v, positions=put(c.positions, cache.positions),
                          segment_ids=put(c.segment_ids, cache.segment_ids), index=put(c.index, cache.index))
    new = state.replace(
        cache=new_cache, tokens=put(state.tokens, tok_r),
        positions=put(state.positions, positions_rt[:, -1] + 1), num_generated=put(state.num_generated, num_gen_r),
        done=put(state.done, finish_r != RUNNING), finish=put(state.finish, finish_r),
        keys=put(state.keys, keys_r2), out_tokens=put(state.out_tokens, out_rm),
        out_logprobs=put(state.out_logprobs, lp_rm))
    return _constrain_state(new)

  def _compact_impl(self, state: DecodeState, rows_c, keep_c) -> DecodeState:
    """The rows `rows_c` of state as a smaller batch C; rows with keep_c False become empty (done).
    A row's sample depends only on its own key and step count, so moving it changes nothing."""
    self.compilations["compact"] += 1
    c = state.cache
    take = lambda a: a[rows_c]
    cache = c.map_kv(take if c.per_layer else (lambda a: a[:, rows_c]))
    cache = cache.replace(positions=take(c.positions), segment_ids=take(c.segment_ids), index=take(c.index))
    rows = {f: take(getattr(state, f)) for f in ("tokens", "positions", "num_generated", "finish", "keys",
                                                   "out_tokens", "out_logprobs")}
    return _constrain_state(state.replace(cache=cache, done=take(state.done) | ~keep_c, **rows))

  def _decode_impl(self, params, state: DecodeState, rule: StopRule, prefix: KVCache | None, release_b,
                   free_target, *, spec: DecodeSpec):
    """Decodes until every row is done, `free_target` more rows are done, or spec.chunk_steps steps.
    Returns (state, steps)."""
    self.compilations["decode"] += 1
    model, blocks = self._model(params)
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
      code_b = _finish_codes(tok_b, out_bm, num_gen_b, rule, max_new)
      new = DecodeState(
          cache=cache, tokens=jnp.where(active_b, tok_b, st.tokens), positions=st.positions + active_b,
          num_generated=num_gen_b, done=st.done | (active_b & (code_b != RUNNING)),
          finish=jnp.where(active_b, code_b, st.finish), keys=st.keys, out_tokens=out_bm, out_logprobs=lp_bm)
      return _constrain_state(new), step + 1

    return jax.lax.while_loop(cond, body, (state, jnp.int32(0)))

  # ------------------------------------------------------------------------------------------- host side
  def prefill_prefix(self, prefix: Sequence[int]) -> KVCache:
    """KV cache [layers, 1, kv_heads, padded length, head_dim] of a shared prefix (segment 1, positions
    0..len-1)."""
    arrays = prefix_kv.padded_prefix(prefix)
    with jax.set_mesh(self.mesh):
      return self._prefix(self.params, *map(jnp.asarray, arrays))

  def _check_prompts(self, prompts) -> list[np.ndarray]:
    out = []
    for i, p in enumerate(prompts):
      a = np.asarray(p, dtype=np.int64).reshape(-1)
      if a.size == 0:
        raise ValueError(f"prompt {i} is empty; a prompt needs at least one token (e.g. BOS)")
      if a.min() < 0 or a.max() >= self.cfg.vocab_size:
        raise ValueError(f"prompt {i}: token ids must be in [0, {self.cfg.vocab_size}), found "
                         f"[{a.min()}, {a.max()}]")
      out.append(a.astype(np.int32))
    return out

  def stream(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int | None = None,
             sampling: Sampling | None = None, seeds: np.ndarray | None = None,
             stop_sequences: Sequence[Sequence[int]] = (), stop_strings: Sequence[str] = (),
             eos_ids: Sequence[int] | None = None, prefix: int | str | None = "auto",
             ) -> Iterator[tuple[int, Completion]]:
    """Yields (prompt index, Completion) as rows finish.

    seeds: uint32 [N, 2] per-prompt (a, b) with row key fold_in(PRNGKey(a), b) (see plan.seed_pairs_*);
    default: fold_in(PRNGKey(config.seed), i). prefix: 'auto' (reuse the prompts' common prefix when at
    least config.prefix_min_tokens long), an explicit length, or None/0. eos_ids: the ids a row ends at
    (excluded from its tokens, finish_reason 'eos'); default the model's eos_id and extra_eos_ids.
    """
    cfg = self.config
    prompts = self._check_prompts(prompts)
    n = len(prompts)
    if n == 0:
      return
    max_new = cfg.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
    sampling = sampling or Sampling(cfg.temperature, cfg.top_k, cfg.top_p)
    if max_new <= 0:
      for i in range(n):
        yield i, Completion(np.zeros(0, np.int32), np.zeros(0, np.float32), "length")
      return
    if seeds is None:
      seeds = plan.seed_pairs_from_int(cfg.seed, n)
    seeds = np.asarray(seeds, np.uint32)
    if seeds.shape != (n, 2):
      raise ValueError(f"seeds must be uint32 [{n}, 2], found shape {seeds.shape}")
    if stop_strings and self.detokenize is None:
      raise ValueError("stop strings need a tokenizer (Sampler(detokenize=...))")
    eos = tuple(int(e) for e in (self.cfg.eos_ids if eos_ids is None else eos_ids))
    stops = tuple(tuple(int(t) for t in s) for s in stop_sequences if len(s))
    spec = DecodeSpec(sampling, max_new, min(cfg.chunk_steps, max_new))
    rule = StopRule.make(eos, stops)

    limit = self.cfg.max_position_embeddings
    for i, p in enumerate(prompts):
      if len(p) + max_new - 1 > limit:  # the last new token is sampled, never fed back
        raise plan.PlanError(f"prompt {i}: {len(p)} tokens + max_new_tokens {max_new} pass the model's "
                             f"max_position_embeddings ({limit}); shorten the prompt or max_new_tokens")
    p_len = prefix_kv.prefix_length(prompts, prefix, cfg.prefix_min_tokens)
    prefix_cache = None
    if p_len:
      prefix_cache = self.prefill_prefix(prompts[0][:p_len])
      self.stats["prefix_tokens"] += p_len
    suffixes = [p[p_len:] for p in prompts]
    for group in plan.group_by_length([len(s) for s in suffixes], cfg.length_buckets):
      yield from self._run_group(group, suffixes, seeds, spec, rule, stops, prefix_cache, p_len, stop_strings)

  def generate(self, prompts, **kwargs) -> list[Completion]:
    """Completions in prompt order (see `stream` for the arguments)."""
    out: list[Completion | None] = [None] * len(prompts)
    for i, c in self.stream(prompts, **kwargs):
      out[i] = c
    return out

  def _run_group(self, group: plan.Group, suffixes, seeds, spec: DecodeSpec, rule: StopRule, stops,
                 prefix_cache, p_len, stop_strings) -> Iterator[tuple[int, Completion]]:
    cfg = self.config
    t_len = group.length
    batch = plan.bucket_batch(len(group.indices), cfg.max_batch)
    slots = t_len + spec.max_new_tokens
    refill_floor = min(cfg.refill_min, batch)
    queue = collections.deque(group.indices)
    row_req = np.full(batch, -1)
    release = np.zeros(batch, bool)

    with jax.set_mesh(self.mesh):
      state = self._empty(batch, slots, spec.max_new_tokens)

      def refill(state):
        free = np.nonzero(row_req < 0)[0]
        take = min(len(free), len(queue))
        if take == 0:
          return state
        reqs = [queue.popleft() for _ in range(take)]
        r = plan.bucket_batch(take, batch, refill_floor)
        tokens = np.zeros((r, t_len), np.int32)
        positions = np.zeros((r, t_len), np.int32)
        segments = np.zeros((r, t_len), np.int32)
        seeds_r = np.zeros((r, 2), np.uint32)
        rows = np.full(r, batch, np.int32)
        for j, q in enumerate(reqs):
          s = suffixes[q]
          tokens[j, t_len - len(s):] = s
          positions[j, t_len - len(s):] = p_len + np.arange(len(s))
          segments[j, t_len - len(s):] = 1
          seeds_r[j] = seeds[q]
          rows[j] = free[j]
        row_req[free[:take]] = reqs
        release[free[:take]] = False
        self.stats["prefill_rows"] += r
        self.stats["prefill_tokens"] += sum(len(suffixes[q]) for q in reqs)
        return self._refill(self.params, state, rule, prefix_cache, jnp.asarray(tokens), jnp.asarray(positions),
                            jnp.asarray(segments), jnp.asarray(seeds_r), jnp.asarray(rows), spec=spec)

      state = refill(state)
      while (row_req >= 0).any():
        # Reading `done` right after a refill catches rows finished by their first token.
        done, num_gen, finish = jax.device_get((state.done, state.num_generated, state.finish))
        running = (row_req >= 0) & ~done
        if running.any() and not (done & (row_req >= 0)).any():
          # Queue empty: stop once the live rows fit half the batch, so the tail runs on a smaller one.
          target = min(refill_floor, len(queue)) if queue else max(1, int(running.sum()) - batch // 2)
          state, steps = self._decode(self.params, state, rule, prefix_cache, jnp.asarray(release), jnp.int32(target),
                                      spec=spec)
          release[:] = False
          steps = int(steps)
          self.stats["decode_steps"] += steps
          self.stats["decode_slots"] += steps * batch
          done, num_gen, finish = jax.device_get((state.done, state.num_generated, state.finish))
        occupied = row_req >= 0
        finished = occupied & done
        check_strings = bool(stop_strings) and (occupied & ~done).any()
        if finished.any() or check_strings:
          out_tokens, out_lps = jax.device_get((state.out_tokens, state.out_logprobs))
          for b in np.nonzero(occupied)[0]:
            if not finished[b] and not check_strings:
              continue
            toks, lps = out_tokens[b, :num_gen[b]], out_lps[b, :num_gen[b]]
            comp = self._completion(toks, lps, int(finish[b]) if finished[b] else RUNNING, stops,
                                    stop_strings)
            if comp is None:
              continue  # still running, no stop string yet
            if not finished[b]:
              release[b] = True  # stop string seen: free the row on the device at the next call
            self.stats["generated_tokens"] += int(num_gen[b])
            self.stats["useful_decode_tokens"] += max(0, comp.num_decoded - 1)
            yield int(row_req[b]), comp
            row_req[b] = -1
        state = refill(state)
        if not queue and batch > 1:
          # The tail: once the queue is dry and at most half the rows live, move them into the smallest
          # batch bucket that holds them (one gather) instead of decoding mostly empty rows to the end.
          live = np.nonzero(row_req >= 0)[0]
          small = plan.bucket_batch(len(live), batch)
          if len(live) and small <= batch // 2:
            sel = np.concatenate([live, np.nonzero(row_req < 0)[0][:small - len(live)]])
            keep = np.arange(small) < len(live)
            state = self._compact(state, jnp.asarray(sel, jnp.int32), jnp.asarray(keep))
            row_req, release, batch = np.where(keep, row_req[sel], -1), release[sel] & keep, small

  def _completion(self, toks, lps, code, stops, stop_strings) -> Completion | None:
    toks, lps = np.asarray(toks, np.int32), np.asarray(lps, np.float32)
    reason = _REASONS.get(code)
    if code == FINISH_EOS:
      toks, lps = toks[:-1], lps[:-1]
    elif code == FINISH_STOP:
      # The longest sequence that ends the output (of [5] and [4, 5], [4, 5]), whatever the listed order.
      for seq in sorted(stops, key=len, reverse=True):
        if len(toks) >= len(seq) and tuple(toks[len(toks) - len(seq):]) == seq:
          toks, lps = toks[:len(toks) - len(seq)], lps[:len(lps) - len(seq)]
          break
    if stop_strings:
      cut = _stop_string_cut(toks, stop_strings, self.detokenize)
      if cut is not None:
        return _Completion(toks[:cut], lps[:cut], "stop", eos=False)
    if code == RUNNING:
      return None
    return _Completion(toks, lps, reason, eos=code == FINISH_EOS)


def _Completion(toks, lps, reason, eos: bool) -> Completion:
  return Completion(toks, lps, reason, len(toks) + (1 if eos else 0))


def _stop_string_cut(toks, stop_strings, detokenize) -> int | None:
  """Smallest i such that detokenize(toks[:i]) contains a stop string, or None."""
  hit = lambda i: any(s in detokenize(toks[:i].tolist()) for s in stop_strings)
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

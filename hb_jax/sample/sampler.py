"""Batched generation with a KV cache: prefill in one pass, decode in one jitted `lax.while_loop`.

The Sampler joins the two halves: the device programs (hb_jax.sample.programs: refill, decode, compact, the
shared prefix) and the host scheduler (hb_jax.sample.scheduler: the queue, refills, compaction, stop
strings). Prompts are grouped by length bucket; each bucket's prompts stream through its rows, finished rows
are handed out and refilled with queued prompts, and the tail moves to smaller batches. A prompt head every
prompt shares (the curation rubric) is prefilled once into a batch-1 cache every row attends to
(hb_jax.sample.prefix), neither recomputed nor copied per row. A row's token at step t is drawn with
fold_in(row key, t), so its sample never depends on its batch-mates, refills, or chunk boundaries.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hb_jax.config import SampleConfig
from hb_jax.model.kv_cache import KVCache
from hb_jax.model.llama import Llama
from hb_jax.parallel import SERVE_RULES, Rules, batch_shards
from hb_jax.sample import plan, programs
from hb_jax.sample.engine import Engine
from hb_jax.sample.programs import DecodeSpec, RUNNING, StopRule
from hb_jax.sample.sampling import Sampling
from hb_jax.sample.scheduler import Completion, PageTable, RowScheduler, StopRules, check_token_ids, pack_rows

__all__ = ["Completion", "Sampler"]


class Sampler(Engine):
  """Generation for one model on one mesh. `compilations` counts traces (= compiled programs) by name."""

  def __init__(self, model: Llama, mesh: Mesh | None = None, config: SampleConfig = SampleConfig(), *,
               rules: Rules = SERVE_RULES, detokenize: Callable[[Sequence[int]], str] | None = None,
               params=None):
    super().__init__(model, mesh, config, rules=rules, params=params)
    self.detokenize = detokenize

  def _check_prompts(self, prompts) -> list[np.ndarray]:
    out = check_token_ids(prompts, self.cfg.vocab_size, "prompt")
    for i, a in enumerate(out):
      if a.size == 0:
        raise ValueError(f"prompt {i} is empty; a prompt needs at least one token (e.g. BOS)")
    return out

  def stream(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int | None = None,
             sampling: Sampling | None = None, seeds: np.ndarray | None = None,
             stop_sequences: Sequence[Sequence[int]] = (), stop_strings: Sequence[str] = (),
             eos_ids: Sequence[int] | None = None, prefix: int | str | None = "auto",
             ) -> Iterator[tuple[int, Completion]]:
    """Yields (prompt index, Completion) as rows finish.

    seeds: uint32 [N, 2] per-prompt (a, b) with row key fold_in(PRNGKey(a), b) (see plan.seed_pairs_*);
    default: fold_in(PRNGKey(config.sampling.seed), i). prefix: 'auto' (reuse the prompts' common prefix when at
    least config.prefix_min_tokens long), an explicit length, or None/0. eos_ids: the ids a row ends at
    (excluded from its tokens, finish_reason 'eos'); default the model's eos_id and extra_eos_ids.
    """
    cfg = self.config
    prompts = self._check_prompts(prompts)
    n = len(prompts)
    if n == 0:
      return
    max_new = cfg.sampling.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
    sampling = sampling or Sampling.of(cfg.sampling)
    if max_new <= 0:
      for i in range(n):
        yield i, Completion(np.zeros(0, np.int32), np.zeros(0, np.float32), "length")
      return
    if seeds is None:
      seeds = plan.seed_pairs_from_int(cfg.sampling.seed, n)
    seeds = np.asarray(seeds, np.uint32)
    if seeds.shape != (n, 2):
      raise ValueError(f"seeds must be uint32 [{n}, 2], found shape {seeds.shape}")
    if stop_strings and self.detokenize is None:
      raise ValueError("stop strings need a tokenizer (Sampler(detokenize=...))")
    eos = tuple(int(e) for e in (self.cfg.eos_ids if eos_ids is None else eos_ids))
    stops = StopRules(tuple(tuple(int(t) for t in s) for s in stop_sequences if len(s)), tuple(stop_strings),
                      self.detokenize)
    spec = DecodeSpec(sampling, max_new, min(cfg.chunk_steps, max_new))

    limit = self.cfg.max_position_embeddings
    for i, p in enumerate(prompts):
      if len(p) + max_new - 1 > limit:  # the last new token is sampled, never fed back
        raise plan.PlanError(f"prompt {i}: {len(p)} tokens + max_new_tokens {max_new} pass the model's "
                             f"max_position_embeddings ({limit}); shorten the prompt or max_new_tokens")
    with jax.set_mesh(self.mesh):  # every array a program reads from the host is made here: replicated on the mesh
      rule = StopRule.make(eos, stops.sequences)
      prefix_cache, p_len = self.shared_prefix(prompts, prefix, per_layer=True)
    suffixes = [p[p_len:] for p in prompts]
    for group in plan.group_by_length([len(s) for s in suffixes], cfg.length_buckets):
      yield from self._run_group(group, suffixes, seeds, spec, rule, stops, prefix_cache, p_len)

  def generate(self, prompts, **kwargs) -> list[Completion]:
    """Completions in prompt order (see `stream` for the arguments)."""
    out: list[Completion | None] = [None] * len(prompts)
    for i, c in self.stream(prompts, **kwargs):
      out[i] = c
    return out

  def _run_group(self, group: plan.Group, suffixes, seeds, spec: DecodeSpec, rule: StopRule, stops: StopRules,
                 prefix_cache: KVCache | None, p_len: int) -> Iterator[tuple[int, Completion]]:
    """One length bucket: the scheduler says what to run, the programs run it."""
    page_size = self.config.page_size
    batch = plan.bucket_batch(len(group.indices), self.config.max_batch)
    shards = batch_shards(batch, dict(self.mesh.shape), self.rules)
    # Paged rows split over batch shards keep their shard's pages, so they are never compacted.
    rows = RowScheduler(group.indices, self.config.max_batch, self.config.refill_min,
                        compact=not page_size or shards == 1)
    slots = group.length + spec.max_new_tokens
    pages = PageTable(rows.batch, slots, page_size, shards) if page_size else None

    def refill(state):
      todo = rows.next_refill()
      if todo is None:
        return state
      arrays = pack_rows([suffixes[q] for q in todo.requests], len(todo.rows), group.length, p_len, left_pad=True)
      self.stats["prefill_rows"] += len(todo.rows)
      self.stats["prefill_tokens"] += sum(len(suffixes[q]) for q in todo.requests)
      seeds_r = np.zeros((len(todo.rows), 2), np.uint32)
      seeds_r[:len(todo.requests)] = seeds[todo.requests]
      table = None
      if pages is not None:
        for row, q in zip(todo.rows, todo.requests):
          pages.grow(row, len(suffixes[q]))  # the padding is not stored
        table = jnp.asarray(pages.rows(todo.rows))
      return self.run(programs.refill, self.graphdef, self.params, state, rule, prefix_cache,
                      *map(jnp.asarray, (*arrays, seeds_r, todo.rows)), table, spec=spec)

    def decode_table(done, num_gen):
      """The page table for the next decode call: every running row can write its next chunk_steps tokens
      (the token fed at a step goes to slot prompt length + num_generated - 1)."""
      if pages is None:
        return None
      for row in np.nonzero((rows.row_req >= 0) & ~done)[0]:
        pages.grow(row, len(suffixes[rows.row_req[row]]) + int(num_gen[row]) - 1 + spec.chunk_steps)
      return jnp.asarray(pages.table)

    def finish_states(state):
      return jax.device_get((state.done, state.num_generated, state.finish))

    with jax.set_mesh(self.mesh):
      state = refill(self.run(programs.init_state, self.cfg, rows.batch, slots, spec.max_new_tokens, page_size))
      while rows.busy:
        # Reading `done` right after a refill catches rows finished by their first token.
        done, num_gen, finish = finish_states(state)
        target = rows.decode_target(done)
        if target is not None:
          state, steps = self.run(programs.decode, self.graphdef, self.params, state, rule, prefix_cache,
                                  jnp.asarray(rows.take_release()), jnp.int32(target), decode_table(done, num_gen),
                                  spec=spec)
          steps = int(steps)
          self.stats["decode_steps"] += steps
          self.stats["decode_slots"] += steps * rows.batch
          done, num_gen, finish = finish_states(state)
        read = rows.rows_to_read(done, bool(stops.strings))
        if len(read):
          out_tokens, out_lps = jax.device_get((state.out_tokens, state.out_logprobs))
          for b in read:
            comp = stops.completion(out_tokens[b, :num_gen[b]], out_lps[b, :num_gen[b]],
                                    int(finish[b]) if done[b] else RUNNING)
            if comp is None:
              continue  # still running, no stop string yet
            self.stats["generated_tokens"] += int(num_gen[b])
            self.stats["useful_decode_tokens"] += max(0, comp.num_decoded - 1)
            if pages is not None:
              pages.release(b)
            yield rows.hand_out(b, still_running=not done[b]), comp
        state = refill(state)
        shrink = rows.compaction()
        if shrink is not None:
          if pages is not None:
            pages.compacted(*shrink)
          state = self.run(programs.compact, state, *map(jnp.asarray, (shrink[0].astype(np.int32), shrink[1])))

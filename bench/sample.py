"""Sampling benchmark: hb_jax KV-cache generation vs `transformers.generate` on the same converted weights.

    python bench/run.py sample [--batches 1,8,32,64] [--prompt 64] [--new 64] [--quick]

Rows: greedy decode tokens/s (prefill included, compile excluded) for hb_jax and for transformers
(greedy, cache on), their ratio, hb_jax without a cache (full recomputation per token), and the roofline:
per-step time predicted from the matmul rate measured at the decode step's own shapes and from the measured
memory bandwidth (weights + KV cache read once per step); and the ceiling: the prefill's matmuls plus new - 1
steps at that roofline with nothing else, as tok/s and as the largest ratio to transformers it allows.
Then the utilisation of continuous batching with mixed output lengths (useful decoded tokens / decoded
slots) against what static batches would get. Then one decode step's time with rows filled to 25%, 50% and
100% of a long cache (--live-slots): a contiguous cache read whole (`model.attention=xla`, the einsum) and
a block at a time up to the longest row (`chunked`), and a paged cache read page by page (`sample.page_size`),
in the same run.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

MODEL = dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
             num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
             rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)


def _hf_model(folder: str):
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  torch.manual_seed(0)
  model = LlamaForCausalLM(LlamaConfig(**MODEL)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if not name.endswith("norm.weight"):
        p.normal_(0.0, 0.02)
  model.save_pretrained(folder, safe_serialization=True)
  return model


def _time(fn, repeats: int = 1) -> float:
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def _matmul_rate(m: int, k: int, n: int, iters: int | None = None) -> float:
  """Measured FLOP/s of an [m, k] x [k, n] fp32 matmul (jitted, repeated in one program; its operands stay
  in cache, so this is an upper bound on the rate the shape gets inside a model)."""
  import jax
  import jax.numpy as jnp

  if iters is None:  # 20 repeats, fewer for prefill-sized shapes (~20 GFLOP a timing at most)
    iters = max(3, min(20, int(2e10 / (2.0 * m * k * n))))

  a = jnp.ones((m, k), jnp.float32)
  b = jnp.ones((k, n), jnp.float32) * 1e-3

  @jax.jit
  def loop(a, b):
    def body(i, acc):
      return acc + (a + i.astype(a.dtype) * 1e-6) @ b
    return jax.lax.fori_loop(0, iters, body, jnp.zeros((m, n), jnp.float32))

  loop(a, b).block_until_ready()
  t = _time(lambda: loop(a, b).block_until_ready(), 3)
  return 2.0 * m * k * n * iters / t


def _bandwidth(mbytes: int = 256) -> float:
  """Measured bytes/s of a streaming read (sum of a large fp32 array)."""
  import jax
  import jax.numpy as jnp

  x = jnp.ones((mbytes * 2**20 // 4,), jnp.float32)
  f = jax.jit(jnp.sum)
  f(x).block_until_ready()
  return x.nbytes / _time(lambda: f(x).block_until_ready(), 5)


def _matmul_seconds(cfg, rows: int, head_rows: int, context: float) -> tuple[float, float]:
  """(seconds, FLOPs) of one forward's matmuls over `rows` tokens, each shape at its own measured rate:
  the layers' projections, the output head over `head_rows` tokens, and attention's two products over
  `context` keys per token on average."""
  d, f, v, l = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
  h, kh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  shapes = [(rows, d, h * hd, l), (rows, d, 2 * kh * hd, l), (rows, h * hd, d, l), (rows, d, 2 * f, l),
            (rows, f, d, l), (head_rows, d, v, 1)]
  seconds = flops = 0.0
  for m, k, n, count in shapes:
    seconds += count * 2.0 * m * k * n / _matmul_rate(m, k, n)
    flops += count * 2.0 * m * k * n
  attn_flops = 4.0 * rows * l * h * hd * context
  # Rated as one [rows * heads, head_dim] x [head_dim, context] product (the scores' shape per query row).
  seconds += attn_flops / _matmul_rate(rows * h, hd, max(1, round(context)))
  return seconds, flops + attn_flops


def _ceiling(cfg, batch: int, prompt: int, new: int, step_s: float) -> dict:
  """The fastest this run could be here: the prefill's matmuls at their measured rates (prompt-sized
  shapes, causal attention over prompt/2 keys on average, the head on each row's last token only) plus
  new - 1 decode steps at the step roofline, and nothing else (no softmax, norms, cache writes, dispatch)."""
  prefill_s, prefill_flops = _matmul_seconds(cfg, batch * prompt, batch, prompt / 2)
  seconds = prefill_s + (new - 1) * step_s
  return dict(prefill_s=prefill_s, prefill_flops=prefill_flops, seconds=seconds, tok_s=batch * new / seconds)


def _roofline(cfg, batch: int, context: int) -> dict:
  """Predicted decode-step seconds: compute (per-shape measured matmul rates) and memory (bandwidth)."""
  l, kh, hd = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
  compute, flops = _matmul_seconds(cfg, batch, batch, context)
  bw = _bandwidth()
  weight_bytes = 4.0 * cfg.num_params_no_embedding
  kv_bytes = 4.0 * 2 * l * batch * context * kh * hd
  memory = (weight_bytes + kv_bytes) / bw
  return dict(compute_s=compute, memory_s=memory, flops=flops, bandwidth=bw,
              step_s=max(compute, memory))


def main(argv: list[str]) -> dict:
  ap = argparse.ArgumentParser(prog="bench/run.py sample")
  ap.add_argument("--batches", default="1,8,32,64")
  ap.add_argument("--prompt", type=int, default=64)
  ap.add_argument("--new", type=int, default=64)
  ap.add_argument("--quick", action="store_true", help="skip the no-cache and utilisation rows")
  ap.add_argument("--live-slots", type=int, default=2048, help="cache slots of the decode-step-vs-live rows")
  ap.add_argument("--live-batch", type=int, default=16)
  ap.add_argument("--live-page-size", type=int, default=128, help="the paged cache's page of those rows")
  args = ap.parse_args(argv)
  batches = [int(b) for b in args.batches.split(",")]

  import jax
  import torch

  from hb_jax import api
  from hb_jax.config import SampleConfig
  from hb_jax.convert import convert
  from hb_jax.sample.sampler import Sampler
  from hb_jax.sample.sampling import Sampling

  workdir = tempfile.mkdtemp(prefix="bench_sample_")
  hf = _hf_model(os.path.join(workdir, "hf"))
  convert(os.path.join(workdir, "hf"), os.path.join(workdir, "model"))
  lm = api.load(os.path.join(workdir, "model"))
  cfg = lm.cfg
  max_batch = max(batches)
  sample_cfg = SampleConfig(max_batch=max_batch, chunk_steps=args.new, length_buckets=(args.prompt,
                            2 * args.prompt, 4 * args.prompt))
  sampler = Sampler(lm.model, lm.mesh, sample_cfg, params=lm.state)
  rng = np.random.default_rng(0)
  greedy = Sampling()
  rows = []
  print(f"model: {cfg.num_params / 1e6:.1f}M params, fp32, {jax.devices()[0].platform} x{jax.device_count()}, "
        f"torch threads {torch.get_num_threads()}; prompt {args.prompt}, new {args.new}, greedy")
  print(f"{'batch':>5} {'hb_jax tok/s':>13} {'hf tok/s':>10} {'ratio':>6} {'no-cache':>9} "
        f"{'roofline':>9} {'bound':>7} {'%roof':>6} {'ceiling':>8} {'max ratio':>9}")
  for b in batches:
    prompts = rng.integers(3, cfg.vocab_size, size=(b, args.prompt)).tolist()

    def ours():
      out = sampler.generate(prompts, max_new_tokens=args.new, sampling=greedy, eos_ids=())
      assert all(len(c.tokens) == args.new for c in out)
      return out

    ours()  # compile
    t_ours = _time(ours, 2)
    ids = torch.tensor(prompts)

    def ref():
      with torch.no_grad():
        return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new,
                           min_new_tokens=args.new, do_sample=False, use_cache=True, pad_token_id=0)

    ref()
    t_ref = _time(ref, 2 if b <= 8 else 1)
    nocache = float("nan")
    if not args.quick and b <= 8:
      nocache = _no_cache_rate(lm, prompts, min(args.new, 16))
    roof = _roofline(cfg, b, args.prompt + args.new)
    ceiling = _ceiling(cfg, b, args.prompt, args.new, roof["step_s"])
    tok = b * args.new
    row = dict(batch=b, ours=tok / t_ours, reference=tok / t_ref, ratio=t_ref / t_ours, no_cache=nocache,
               roofline=b / roof["step_s"], bound="memory" if roof["memory_s"] > roof["compute_s"] else "compute",
               step_flops=roof["flops"], bandwidth_gbs=roof["bandwidth"] / 1e9,
               ceiling=ceiling["tok_s"], ceiling_ratio=t_ref / ceiling["seconds"], prefill_floor_s=ceiling["prefill_s"])
    row["pct_roofline"] = 100 * row["ours"] / row["roofline"]
    rows.append(row)
    print(f"{b:>5} {row['ours']:>13.1f} {row['reference']:>10.1f} {row['ratio']:>6.2f} {nocache:>9.1f} "
          f"{row['roofline']:>9.1f} {row['bound']:>7} {row['pct_roofline']:>5.0f}% {row['ceiling']:>8.1f} "
          f"{row['ceiling_ratio']:>8.2f}x")
  print(f"compilations: {dict(sampler.compilations)}; bandwidth {rows[-1]['bandwidth_gbs']:.1f} GB/s")

  util = None
  if not args.quick:
    util = _utilisation(lm, sample_cfg, args.prompt, args.new)
    print(f"continuous batching, mixed output lengths: utilisation {100 * util['utilisation']:.1f}% "
          f"(static batches would get {100 * util['static_utilisation']:.1f}%), {util['tokens_per_s']:.1f} tok/s, "
          f"{util['records']} prompts, compilations {util['compilations']}")
  live = _decode_vs_live(lm, args.live_batch, args.live_slots, args.live_page_size)
  names = list(live[1.0])
  print(f"decode step, {args.live_batch} rows x {args.live_slots} cache slots, ms (and / its own 100% time):")
  print(f"{'live':>6} " + " ".join(f"{n:>16}" for n in names))
  for f, r in live.items():
    print(f"{100 * f:>5.0f}% " + " ".join(f"{1e3 * r[n]:>8.2f} ({r[n] / live[1.0][n]:.2f}x)" for n in names))
  main_row = next((r for r in rows if r["batch"] == 32), rows[-1])
  return dict(ours=round(main_row["ours"], 2), reference=round(main_row["reference"], 2),
              ratio=round(main_row["ratio"], 3), ceiling_ratio=round(main_row["ceiling_ratio"], 3), unit="tokens/s (greedy decode, batch %d)" % main_row["batch"],
              batch=main_row["batch"], prompt=args.prompt, new_tokens=args.new, dtype="float32",
              params_m=round(cfg.num_params / 1e6, 1), rows=rows,
              utilisation=None if util is None else round(util["utilisation"], 4),
              static_utilisation=None if util is None else round(util["static_utilisation"], 4),
              compilations=dict(sampler.compilations),
              decode_step_vs_live={f"{round(100 * f)}%": {k: round(1e3 * v, 3) for k, v in r.items()}
                                   for f, r in live.items()},
              paged_25_over_100=round(live[0.25]["paged"] / live[1.0]["paged"], 3),
              paged_100_over_xla=round(live[1.0]["paged"] / live[1.0]["xla"], 3))


LIVE_VARIANTS = (("xla", 0), ("chunked", 0), ("auto", 1))  # (model.attention, paged?)


def _decode_vs_live(lm, batch: int, slots: int, page_size: int, steps: int = 8, fractions=(0.25, 0.5, 1.0)
                    ) -> dict:
  """{fraction: {variant: seconds per decode step}} for rows whose caches hold `fraction` of `slots` at the
  last of `steps` greedy steps (programs.decode on a state built here: K/V zeros, which costs what real
  values cost). `xla` reads every allocated slot of a contiguous cache; `chunked` reads it a block at a time
  up to the longest row; `paged` is a paged cache (`page_size`, every page assigned) read page by page."""
  import dataclasses

  import jax
  import jax.numpy as jnp

  from hb_jax.model.llama import abstract_model
  from hb_jax.sample import programs as sp
  from hb_jax.sample.sampling import Sampling

  spec = sp.DecodeSpec(Sampling(), max_new_tokens=steps + 1, chunk_steps=steps)
  rule = sp.StopRule.make((), ())
  never = jnp.int32(batch + 1)

  @jax.jit
  def filled(state, length):
    c = state.cache
    used = jnp.arange(c.slots)[None] < length
    cache = c.replace(segment_ids=jnp.broadcast_to(used, c.segment_ids.shape).astype(jnp.int32),
                      positions=jnp.broadcast_to(jnp.arange(c.slots) * used, c.positions.shape),
                      index=jnp.full_like(c.index, length))
    return state.replace(cache=cache, done=jnp.zeros_like(state.done), positions=cache.index,
                         num_generated=jnp.ones_like(state.num_generated))

  out = {f: {} for f in fractions}
  with jax.set_mesh(lm.mesh):
    for attention, paged in LIVE_VARIANTS:
      graphdef = abstract_model(dataclasses.replace(lm.cfg, attention=attention))[0]
      ps = page_size if paged else 0
      table = jnp.arange(batch * (-(-slots // ps)), dtype=jnp.int32).reshape(batch, -1) if paged else None
      name = "paged" if paged else attention
      for f in fractions:
        length = int(f * slots) - steps

        def timed():
          state = filled(sp.init_state(lm.cfg, batch, slots, spec.max_new_tokens, ps), length)
          jax.block_until_ready(state)
          t = time.perf_counter()
          _, n = sp.decode(graphdef, lm.state, state, rule, None, jnp.zeros(batch, bool), never, table, spec=spec)
          assert int(n) == steps
          return time.perf_counter() - t

        timed()  # compile
        out[f][name] = min(timed() for _ in range(3)) / steps
  return out


def _no_cache_rate(lm, prompts, new: int) -> float:
  """Greedy tokens/s recomputing the whole (padded, fixed-length) sequence for every new token."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  b, p = len(prompts), len(prompts[0])
  total = p + new

  @jax.jit
  def step(state, tokens, length):
    model = nnx.merge(lm.graphdef, state)
    seg = (jnp.arange(total) < length).astype(jnp.int32)[None].repeat(b, 0)
    h, _ = model(tokens, None, seg, return_hidden=True)
    logits = model.project(jax.lax.dynamic_slice_in_dim(h, length - 1, 1, axis=1))
    return jnp.argmax(logits[:, 0], -1).astype(jnp.int32)

  tokens = np.zeros((b, total), np.int32)
  tokens[:, :p] = prompts
  step(lm.state, tokens, p).block_until_ready()
  t = time.perf_counter()
  for i in range(new):
    nxt = np.asarray(step(lm.state, tokens, p + i))
    if p + i < total:
      tokens[:, p + i] = nxt
  return b * new / (time.perf_counter() - t)


def _utilisation(lm, sample_cfg, prompt: int, new: int, records: int = 96) -> dict:
  """Continuous batching over prompts whose outputs end at geometric lengths (EOS on ~1/24 of tokens)."""
  import dataclasses

  from hb_jax.sample.sampler import Sampler
  from hb_jax.sample.sampling import Sampling

  cfg = dataclasses.replace(sample_cfg, max_batch=32, chunk_steps=new)
  sampler = Sampler(lm.model, lm.mesh, cfg, params=lm.state)
  rng = np.random.default_rng(1)
  prompts = rng.integers(3, lm.cfg.vocab_size, size=(records, prompt)).tolist()
  eos = rng.choice(np.arange(3, lm.cfg.vocab_size), size=lm.cfg.vocab_size // 24, replace=False).tolist()
  kw = dict(max_new_tokens=new, sampling=Sampling(1.0), eos_ids=eos)
  sampler.generate(prompts[:32], **kw)  # compile
  before = dict(sampler.stats)
  t = time.perf_counter()
  out = sampler.generate(prompts, **kw)
  seconds = time.perf_counter() - t
  delta = {k: v - before.get(k, 0) for k, v in sampler.stats.items()}
  lengths = np.array([c.num_decoded for c in out])
  # Static batching: each batch of 32 decodes until its longest row is done (first token from prefill).
  static = sum(max(0, l - 1) for l in lengths) / sum(32 * (max(lengths[i:i + 32]) - 1)
                                                     for i in range(0, records, 32))
  return dict(utilisation=delta["useful_decode_tokens"] / delta["decode_slots"], static_utilisation=static,
              tokens_per_s=lengths.sum() / seconds, records=records, mean_len=float(lengths.mean()),
              compilations=dict(sampler.compilations))

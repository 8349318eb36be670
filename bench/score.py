"""Curation cost: `digits` (one forward pass per candidate) vs `generate` (the paper: sample a reasoning and a
`Score:` line) on the same candidates. `python bench/run.py score [--model DIR] [--n 64] [--max_new_tokens 128]`

Without --model, a demo-preset model with a tokenizer trained on the demo world is initialised at random
(timings do not depend on the weights, except that a random model rarely stops early, which is what a
rating with reasoning costs anyway). Both methods are compiled on a warm-up pass first; the timed pass scores
the same candidates (warm-up and timed pass use the same ones). ours = digits candidates/s, reference = generate candidates/s.
"""
from __future__ import annotations

import argparse
import tempfile
import time


def _default_model(workdir: str, vocab_size: int) -> str:
  import jax
  from flax import nnx

  from hb_jax import model_folder
  from hb_jax.data import synthetic
  from hb_jax.model.llama import Llama
  from hb_jax.model.presets import preset
  from hb_jax.tokenizer import load_tokenizer, train_sentencepiece

  world = synthetic.build_world(synthetic.WorldConfig(pretrain_docs=2000))
  corpus = f"{workdir}/corpus.txt"
  with open(corpus, "w") as f:
    f.write("\n".join(world.pretrain + [r["instruction"].replace("\n", " ") for r in world.seed]))
  tok_file = train_sentencepiece([corpus], f"{workdir}/tok", vocab_size)
  tok = load_tokenizer(tok_file)
  cfg = preset("demo", vocab_size=tok.vocab_size, max_position_embeddings=2048)
  model = Llama(cfg, rngs=nnx.Rngs(0))
  del jax
  return str(model_folder.save_model_folder(f"{workdir}/model", cfg, nnx.state(model, nnx.Param),
                                          tokenizer_file=tok_file))


def main(argv: list[str]) -> dict:
  p = argparse.ArgumentParser(prog="bench/run.py score")
  p.add_argument("--model", default="", help="model folder with a tokenizer (default: a random demo model)")
  p.add_argument("--n", type=int, default=64, help="candidates")
  p.add_argument("--max_new_tokens", type=int, default=128, help="generate: reasoning + score budget")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--header", default="paper", choices=["paper", "compact"])
  p.add_argument("--vocab_size", type=int, default=1024)
  args = p.parse_args(argv)

  from hb_jax import api
  from hb_jax.config import SamplingConfig
  from hb_jax.data import prompts, synthetic
  from hb_jax.pipeline import curation
  from hb_jax.pipeline.config import CurateConfig
  from hb_jax.sample import plan

  tmp = tempfile.mkdtemp(prefix="bench_score_")
  model_dir = args.model or _default_model(tmp, args.vocab_size)
  lm = api.load(model_dir)
  style = synthetic.DEMO_STYLE if args.header == "compact" else prompts.DEFAULT_STYLE
  world = synthetic.build_world(synthetic.WorldConfig(pool_size=max(2 * args.n, 64)))
  cands = [{"id": s["id"], "instruction": world.truth[s["id"]]["instruction"], "output": s["text"]}
           for s in world.pool]
  # Warm-up on the very candidates that are timed: same length buckets and batch sizes, so the timed pass
  # runs compiled programs only (sampling seeds come from record ids, so both passes do the same work).
  warm = timed = cands[:args.n]
  # generate as the paper runs it (no fallback): the timing is of sampled ratings alone.
  cc = CurateConfig(method="digits", batch=args.batch, sampling=SamplingConfig(max_new_tokens=args.max_new_tokens),
                    header=args.header, fallback=False)
  rows, outs = [], {}
  for method in ("digits", "generate"):
    curation.score(method, lm, warm, style=style, tag_mode="source", curate=cc)  # compile
    t0 = time.perf_counter()
    outs[method] = curation.score(method, lm, timed, style=style, tag_mode="source", curate=cc)
    dt = time.perf_counter() - t0
    rows.append((method, dt, len(outs[method]) / dt))
  # The work each method does per candidate beyond the shared rubric (prefilled once, reused by every row):
  # digits runs the candidate's own tokens once; generate runs them and then one decode step per written
  # token. Where a decode step costs what a prefill token does (compute-bound: this CPU at batch 32), the
  # speedup cannot exceed the ratio of the two; it grows where decoding is bandwidth-bound (accelerators).
  encode = curation.encoder("generate", lm.tokenizer, style=style, tag_mode="source")
  ids = [encode(c) for c in timed]
  own = [len(x) - plan.common_prefix_length(ids) for x in ids]
  # Re-encoding a random model's text can split it into more pieces than it sampled; the sampler never
  # writes more than max_new_tokens.
  written = [min(len(lm.tokenizer.encode(o["rating_text"])), args.max_new_tokens) for o in outs["generate"]]
  own_mean, written_mean = sum(own) / len(own), sum(written) / len(written)
  work_ratio = (own_mean + written_mean) / own_mean
  print(f"{'method':<10} {'seconds':>9} {'cand/s':>9}   ({args.n} candidates, header={args.header}, "
        f"generate max_new_tokens={args.max_new_tokens}, batch={args.batch})")
  for m, dt, rate in rows:
    print(f"{m:<10} {dt:>9.3f} {rate:>9.1f}")
  ours, ref = rows[0][2], rows[1][2]
  print(f"digits is {ours / ref:.1f}x faster than generate")
  print(f"tokens per candidate after the shared rubric: {own_mean:.1f} own, {written_mean:.1f} written by generate;"
        f" work ratio {work_ratio:.1f}x (the speedup's bound where decode steps cost what prefill tokens do)")
  return {"ours": ours, "reference": ref, "ratio": ours / ref, "unit": "candidates/s",
          "own_tokens": own_mean, "written_tokens": written_mean, "work_ratio": work_ratio,
          "n": args.n, "max_new_tokens": args.max_new_tokens, "batch": args.batch, "header": args.header,
          "model": args.model or "random demo preset"}

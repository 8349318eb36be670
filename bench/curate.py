"""Self-curation on real text, measured like the paper's dev-set study: each curation method rates the frozen,
hand-labelled candidates of bench/data/curation_dev.jsonl (its card: curation_dev.md) with a real rater,
SmolLM2-135M-Instruct, reading the paper's Table-1 rubric inside its own chat template.

    python bench/run.py curate [--gguf FILE] [--methods generate,digits,likelihood] [--max_new_tokens 96]
                               [--batch 16] [--limit N]

Rows, per method, against the labels written before any model rated a candidate (good = label >= 4):
  parse rate and routes (generate: parsed / fallback / none), precision and recall of A5 (selected at k=5,
  against label 5) and of A4 (k=4, against label >= 4), AUC of the score against label >= 4, Spearman
  correlation of the score with the labels, candidates per second (after a warm-up on the first batch).
`generate` runs with the paper's settings (T 0.7, top-p 0.9, `--max_new_tokens`) and the fallback on; the
paper's own `generate`, without the fallback, is the same sampled texts with every unparsed rating lost
(unrated: never selected, lowest in the ranking), so it is read off the same run, not sampled again.
The JSON line: `ours` the best method's AUC, `reference` that of the paper's generate without the fallback.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import tempfile
import time

import numpy as np

from bench.smollm2 import _gguf

DATA = pathlib.Path(__file__).with_name("data") / "curation_dev.jsonl"


def auc(scores, positive) -> float | None:
  """P(score of a random positive > that of a random negative), ties counting one half (Mann-Whitney U)."""
  from scipy.stats import rankdata
  s, pos = np.asarray(scores, np.float64), np.asarray(positive, bool)
  n1, n0 = int(pos.sum()), int((~pos).sum())
  if not n1 or not n0:
    return None
  ranks = rankdata(s)
  return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def spearman(scores, labels) -> float | None:
  """Rank correlation; None when the scores are all equal (every rating lost, say), where it is undefined."""
  from scipy.stats import spearmanr
  if len(set(scores)) < 2 or len(set(labels)) < 2:
    return None
  return float(spearmanr(scores, labels).statistic)


def selection(selected: set[str], truth: set[str]) -> tuple[float, float]:
  tp = len(selected & truth)
  return (tp / len(selected) if selected else 0.0), (tp / len(truth) if truth else 0.0)


def measure(name: str, rows: list[dict], cands: list[dict], method: str, seconds: float | None) -> dict:
  """One table row: `rows` are the method's ratings of `cands` (score None: unrated)."""
  from hb_jax.pipeline import curation
  labels = {c["id"]: c["label"] for c in cands}
  rated = [{**r, "id": c["id"]} for r, c in zip(rows, cands)]
  out: dict = {"method": name, "candidates": len(cands)}
  if method == "generate":
    routes = {k: sum(r.get("route") == k for r in rated) for k in curation.ROUTES}
    out.update(routes=routes, parse_rate=routes["parsed"] / len(rated))
  for k, truth in ((5, {i for i, l in labels.items() if l == 5}), (4, {i for i, l in labels.items() if l >= 4})):
    chosen = {r["id"] for r in curation.select(rated, k, method)}
    out[f"A{k}_selected"] = len(chosen)
    out[f"A{k}_precision"], out[f"A{k}_recall"] = selection(chosen, truth)
  # Unrated candidates rank below every rating (the pipeline never selects them).
  score = [r["score"] if r["score"] is not None else 0.0 for r in rated]
  y = [labels[r["id"]] for r in rated]
  out["auc"] = auc(score, [l >= 4 for l in y])
  out["spearman"] = spearman(score, y)
  out["candidates_per_s"] = len(cands) / seconds if seconds else None
  return out


def _fmt(x, nd=3):
  return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def main(argv: list[str]) -> dict:
  ap = argparse.ArgumentParser(prog="bench/run.py curate")
  ap.add_argument("--gguf", default="", help="SmolLM2 GGUF file (default: the wheel in .venv/models)")
  ap.add_argument("--data", default=str(DATA))
  ap.add_argument("--methods", default="generate,digits,likelihood")
  ap.add_argument("--max_new_tokens", type=int, default=96, help="generate's reasoning budget (the paper's 96)")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--limit", type=int, default=0, help="rate only the first N candidates (0: all)")
  args = ap.parse_args(argv)

  from hb_jax import api
  from hb_jax.config import SamplingConfig
  from hb_jax.convert import convert
  from hb_jax.data import prompts, records
  from hb_jax.pipeline import curation
  from hb_jax.pipeline.config import CurateConfig

  data = pathlib.Path(args.data)
  digest = hashlib.sha256(data.read_bytes()).hexdigest()
  cands = list(records.read_jsonl(data, ("id", "instruction", "output")))
  if args.limit:
    cands = cands[:args.limit]
  workdir = tempfile.mkdtemp(prefix="bench_curate_")
  gguf = _gguf(args.gguf, workdir)
  convert(gguf, os.path.join(workdir, "model"))
  lm = api.load(os.path.join(workdir, "model"))
  style = prompts.chat_style(lm.tokenizer)  # the paper's rubric inside the rater's own chat template
  good = sum(c["label"] >= 4 for c in cands)
  print(f"{len(cands)} candidates from {data.name} (sha256 {digest[:16]}), {good} good (label >= 4), "
        f"{sum(c['label'] == 5 for c in cands)} with label 5; rater {gguf.name}, the paper's rubric in its chat "
        f"template; generate: T 0.7, top-p 0.9, {args.max_new_tokens} new tokens, fallback on")

  table = []
  methods = args.methods.split(",")
  for method in methods:
    cc = CurateConfig(method=method, batch=args.batch, fallback=True,
                      sampling=SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=0))

    def rate(subset, method=method, cc=cc):
      return curation.score(method, lm, subset, style=style, tag_mode="none", curate=cc)

    rate(cands[:args.batch])  # compile and warm up
    t = time.perf_counter()
    rows = rate(cands)
    seconds = time.perf_counter() - t
    table.append(measure(method, rows, cands, method, seconds))
    if method == "generate":
      # The paper's generate: the same texts, every rating without a `Score: k` lost.
      paper = [r if r["route"] == "parsed" else {**r, "score": None, "route": "none"} for r in rows]
      table.append(measure("generate (no fallback)", paper, cands, method, None))

  print(f"{'method':<24} {'parsed':>7} {'fallback':>8} {'none':>5} {'A5 P':>6} {'A5 R':>6} {'A4 P':>6} {'A4 R':>6} "
        f"{'AUC':>6} {'rho':>6} {'cand/s':>7}")
  for r in table:
    routes = r.get("routes", {})
    print(f"{r['method']:<24} {_fmt(routes.get('parsed')):>7} {_fmt(routes.get('fallback')):>8} "
          f"{_fmt(routes.get('none')):>5} {_fmt(r['A5_precision'], 2):>6} {_fmt(r['A5_recall'], 2):>6} "
          f"{_fmt(r['A4_precision'], 2):>6} {_fmt(r['A4_recall'], 2):>6} {_fmt(r['auc']):>6} "
          f"{_fmt(r['spearman']):>6} {_fmt(r['candidates_per_s'], 1):>7}")
  best = max((r for r in table if r["method"] != "generate (no fallback)"), key=lambda r: r["auc"] or 0.0)
  ref = next((r for r in table if r["method"] == "generate (no fallback)"), None)
  ours, reference = best["auc"], (ref["auc"] if ref else None)
  return {"bench": "curate", "ours": ours, "reference": reference, "ratio": ours / reference if ours and reference else None,
          "unit": "AUC (label >= 4)", "best_method": best["method"], "data_sha256": digest,
          "candidates": len(cands), "max_new_tokens": args.max_new_tokens, "rows": table}

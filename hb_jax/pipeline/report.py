"""report/summary.json, report/report.md and its plots, from the workdir alone (outputs + hidden truth).

Measured, not asserted: every number is computed here from the files the stages wrote. With the demo world,
truth/ holds each segment's hidden kind and each held-out item's answer; with real inputs there is no truth
and the precision/recall/accuracy sections say so.
"""
from __future__ import annotations

import collections
import json
import statistics
from typing import Any

from etils import epath

from hb_jax.data import records
from hb_jax.eval import paired
from hb_jax.pipeline import curation, export


def _read(path: epath.Path, required=()) -> list[dict]:
  return list(records.read_jsonl(path, required)) if path.exists() else []


def _len_stats(texts: list[str], tok) -> dict[str, float]:
  if not texts:
    return {"count": 0}
  lens = [len(tok.encode(t)) if tok is not None else len(t.split()) for t in texts]
  return {"count": len(texts), "mean_tokens": round(statistics.mean(lens), 1),
          "median_tokens": statistics.median(lens), "max_tokens": max(lens)}


def _truth(ctx) -> tuple[dict[str, dict], dict[str, dict], dict]:
  segs = {r["id"]: r for r in _read(ctx.path("truth/segments.jsonl"))}
  held = {r["id"]: r for r in _read(ctx.path("truth/heldout.jsonl"))}
  world = json.loads(ctx.path("truth/world.json").read_text()) if ctx.path("truth/world.json").exists() else {}
  return segs, held, world


def _good_ids(cands: list[dict], truth: dict[str, dict]) -> set[str]:
  from hb_jax.data.synthetic import pair_is_good
  return {c["id"] for c in cands if c.get("segment_id") in truth and pair_is_good(c["instruction"], truth[c["segment_id"]])}


def _histogram(scored: list[dict]) -> dict[str, int]:
  h = collections.Counter()
  for r in scored:
    s = r.get("score")
    if s is None:
      h["unparseable"] += 1
    else:
      h[str(int(round(float(s))))] += 1  # expected ratings (digits, likelihood, fallback) to the nearest digit
  return {k: h.get(k, 0) for k in ("1", "2", "3", "4", "5", "unparseable")}


def _loss_curve(ctx, name: str) -> list[tuple[int, float]]:
  p = ctx.path(f"work/{'pretrain' if name == 'base' else 'train/' + name}/metrics.jsonl")
  out = []
  for r in _read(p):
    if "loss" in r and "step" in r:
      out.append((int(r["step"]), float(r["loss"])))
  return out


def build_summary(ctx) -> dict[str, Any]:
  cfg = ctx.cfg
  from hb_jax.tokenizer import load_tokenizer
  tok = None
  try:
    tok = load_tokenizer(ctx.model_dir("base"))
  except FileNotFoundError:
    pass
  seed = _read(ctx.path("data/seed.jsonl"))
  segs = _read(ctx.path("data/segments.jsonl"))
  cands = _read(ctx.path("augment/candidates.jsonl"))
  truth, held_truth, world = _truth(ctx)
  have_truth = bool(truth)
  good = _good_ids(cands, truth) if have_truth else set()
  summary: dict[str, Any] = {
    "name": cfg.name, "seed": len(seed), "segments": len(segs), "candidates": len(cands),
    "segments_without_candidate": len(segs) - len(cands),
    "base_rate_good": (sum(t["kind"] == "good" for t in truth.values()) / len(truth)) if have_truth else None,
    "base_rate_good_pairs": (len(good) / len(cands)) if have_truth and cands else None,
    "curation": {}, "methods": {}, "unparseable_ratings": {}, "eval": {}, "data": {},
  }
  if cfg.inputs.kind == "synthetic":
    from hb_jax.data.synthetic import is_judging_demo
    summary["judging_demos"] = sum(is_judging_demo(r) for r in seed)
  summary["data"]["seed"] = {"instruction": _len_stats([r["instruction"] for r in seed], tok),
                             "output": _len_stats([r["output"] for r in seed], tok)}
  summary["data"]["candidates"] = {"instruction": _len_stats([r["instruction"] for r in cands], tok),
                                   "output": _len_stats([r["output"] for r in cands], tok)}
  iters = cfg.curate.iterations if cfg.ablation.curation else 0
  histograms = {}
  for t in range(1, iters + 1):
    d = ctx.path(f"curate/iter{t}")
    a4, a5 = _read(d / "A4.jsonl"), _read(d / "A5.jsonl")
    chosen = _read(d / "train.jsonl")
    chosen_ids = {r["id"] for r in chosen if r.get("source") == "augmented"}
    entry = {"method": cfg.curate.method, "k": cfg.curate.k, "A4": len(a4), "A5": len(a5),
             "selected": len(chosen_ids)}
    if have_truth:
      entry.update({k: v for k, v in curation_pr(chosen_ids, good).items() if k in ("precision", "recall")})
    summary["curation"][str(t)] = entry
    summary["data"][f"A4_iter{t}"] = {"output": _len_stats([r["output"] for r in a4], tok)}
    summary["data"][f"A5_iter{t}"] = {"output": _len_stats([r["output"] for r in a5], tok)}
    per_method = {}
    for method in dict.fromkeys([cfg.curate.method, *cfg.curate.compare]):
      scored = _read(d / f"scores_{method}.jsonl")
      if not scored:
        continue
      ids = {r["id"] for r in scored}
      sub_good = good & ids
      m: dict[str, Any] = {"scored": len(scored)}
      for k in (4, 5):
        sel = {r["id"] for r in curation.select(scored, k, method)}
        m[f"A{k}"] = len(sel)
        if have_truth:
          pr = curation_pr(sel, sub_good)
          m[f"A{k}_precision"], m[f"A{k}_recall"] = pr["precision"], pr["recall"]
      sel_k = {r["id"] for r in curation.select(scored, cfg.curate.k, method)}
      if have_truth:
        pr = curation_pr(sel_k, sub_good)
        m.update(precision=pr["precision"], recall=pr["recall"], base_rate=len(sub_good) / len(ids))
      if method == "generate":
        # No rating is lost silently: parsed + fallback + none = scored (none only with curate.fallback off).
        routes = collections.Counter(r.get("route", "parsed" if r.get("score") is not None else "none")
                                     for r in scored)
        m["routes"] = {k: routes.get(k, 0) for k in curation.ROUTES}
        unp = len(scored) - m["routes"]["parsed"]  # no `Score: k` in the text, whatever rated it then
        m["parse_rate"] = m["routes"]["parsed"] / len(scored)
      else:
        unp = sum(r.get("score") is None for r in scored)
      m["unparseable"] = unp
      per_method[method] = m
      summary["unparseable_ratings"].setdefault(method, {})[str(t)] = unp
      histograms[(t, method)] = _histogram(scored)
    summary["methods"][str(t)] = per_method
  summary["histograms"] = {f"{t}/{m}": h for (t, m), h in histograms.items()}
  # held-out accuracy
  from hb_jax.pipeline.stages import eval_models
  per_item: dict[str, dict[str, bool]] = {}
  for key in eval_models(ctx):
    gens = _read(ctx.path(f"evaluate/{key}.jsonl"))
    if not gens:
      continue
    if held_truth and world:
      from hb_jax.data.synthetic import check
      per_family = collections.defaultdict(list)
      per_item[key] = {}
      for g in gens:
        h = held_truth[g["id"]]
        per_item[key][g["id"]] = ok = check(h, g["output"], world["capitals"])
        per_family[h.get("group", h["family"])].append(ok)
      flat = [x for v in per_family.values() for x in v]
      summary["eval"][key] = sum(flat) / len(flat)
      summary.setdefault("eval_by_family", {})[key] = {f: sum(v) / len(v) for f, v in sorted(per_family.items())}
    else:
      summary["eval"][key] = None
  summary["eval_paired"] = _paired(per_item)
  # backward model quality: does x̂ ask the latent instruction of a good segment?
  if have_truth and cands:
    from hb_jax.data.synthetic import parse_instruction
    on_good = [c for c in cands if truth.get(c.get("segment_id"), {}).get("kind") == "good"]
    exact = sum(c["instruction"] == truth[c["segment_id"]]["instruction"] for c in on_good)
    summary["backward"] = {
      "good_segments": len(on_good),
      "asks_latent_task": len(good) / len(on_good) if on_good else 0.0,
      "exact_latent_phrasing": exact / len(on_good) if on_good else 0.0,
      "well_formed_all": sum(parse_instruction(c["instruction"]) is not None for c in cands) / len(cands),
    }
  summary["loss_curves"] = {n: _loss_curve(ctx, n) for n in ("base", "backward", "m0", "m1", "m2", "no_curation")}
  summary["stage_seconds"] = {n: e.get("info", {}).get("seconds") for n, e in ctx.manifest.stages.items()}
  return summary


def _paired(per_item: dict[str, dict[str, bool]]) -> dict[str, dict]:
  """The last model against every other one on the same held-out items (wins, losses, McNemar p)."""
  finals = [k for k in per_item if k.startswith("m") and k[1:].isdigit()]
  if not finals:
    return {}
  last = max(finals, key=lambda k: int(k[1:]))
  return {f"{last}_vs_{k}": paired.compare(per_item[last], v) for k, v in per_item.items() if k != last}


def curation_pr(selected: set[str], good: set[str]) -> dict[str, float]:
  tp = len(selected & good)
  return {"precision": tp / len(selected) if selected else 0.0, "recall": tp / len(good) if good else 0.0}


def _plots(ctx, summary) -> list[str]:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return []
  import io
  made = []

  def save(fig, name):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    records.write_bytes_atomic(ctx.path(f"report/{name}"), buf.getvalue())
    made.append(name)

  hists = summary.get("histograms", {})
  if hists:
    fig, axes = plt.subplots(1, len(hists), figsize=(3.2 * len(hists), 2.6), squeeze=False)
    for ax, (key, h) in zip(axes[0], sorted(hists.items())):
      ax.bar(list(h), list(h.values()), color="tab:blue")
      ax.set_title(f"iter {key}", fontsize=9)
      ax.tick_params(labelsize=7)
    save(fig, "ratings.png")
  curves = {k: v for k, v in summary.get("loss_curves", {}).items() if v}
  if curves:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, pts in curves.items():
      ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    save(fig, "loss.png")
  ev = {k: v for k, v in summary.get("eval", {}).items() if v is not None}
  if ev:
    fig, ax = plt.subplots(figsize=(4.5, 2.8))
    ax.bar(list(ev), list(ev.values()), color="tab:green")
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy")
    save(fig, "accuracy.png")
  return made


def _f(x, nd=3):
  return "n/a" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def render(ctx, summary, plots) -> str:
  cfg = ctx.cfg
  L = [f"# Humpback run `{cfg.name}`", "",
       f"Workdir `{ctx.workdir}`. Headline curation method: **{cfg.curate.method}**, k = {cfg.curate.k}, "
       f"{cfg.curate.iterations} iteration(s); tags {'on' if cfg.ablation.tags else 'off'}; "
       f"curation {'on' if cfg.ablation.curation else 'off (ablation)'}; "
       f"{'joint forward+backward model' if cfg.ablation.joint else 'separate backward model'}.", ""]
  L += ["## Headline", "",
        f"- Pool: {summary['segments']} segments, share good (hidden truth): {_f(summary['base_rate_good'])}; "
        f"candidate pairs that ask the latent task of a good segment: {_f(summary['base_rate_good_pairs'])}."]
  if summary.get("judging_demos"):
    L.append(f"- The seed holds {summary['judging_demos']} judging demonstrations (rated candidates in the curation "
             "prompt's format): supervision for the rater that the paper's seed does not have. "
             "`--config.inputs.judging_demos=false` leaves them out (docs/pipeline.md has the measured effect).")
  elif "judging_demos" in summary:
    L.append("- The seed holds no judging demonstrations: the raters learned judging from the answers alone, as "
             "in the paper.")
  for t, e in summary["curation"].items():
    L.append(f"- Iteration {t}: {e['method']} k={e['k']} kept {e['selected']} "
             f"(A4 {e['A4']}, A5 {e['A5']}); precision {_f(e.get('precision'))}, recall {_f(e.get('recall'))}.")
  if summary["eval"]:
    L.append("- Held-out accuracy: " + ", ".join(f"{k} {_f(v)}" for k, v in summary["eval"].items()) + ".")
  L.append("")
  L += ["## Data (cf. the paper's Table 2)", "", "| set | # examples | instruction tokens (mean) | output tokens (mean) |",
        "|---|---|---|---|"]
  d = summary["data"]
  L.append(f"| seed | {summary['seed']} | {d['seed']['instruction'].get('mean_tokens', '')} | "
           f"{d['seed']['output'].get('mean_tokens', '')} |")
  L.append(f"| all candidates | {summary['candidates']} | {d['candidates']['instruction'].get('mean_tokens', '')} | "
           f"{d['candidates']['output'].get('mean_tokens', '')} |")
  for t in summary["curation"]:
    for k in ("A4", "A5"):
      s = d.get(f"{k}_iter{t}", {}).get("output", {})
      L.append(f"| {k}^({t}) | {s.get('count', 0)} | | {s.get('mean_tokens', '')} |")
  L += ["", "## Curation methods on the same candidates (cf. the paper's Table 7)", "",
        "Precision and recall against the hidden truth (a pair is good when its instruction asks the latent task "
        "of a good segment), for A4, A5 and the run's k, every method side by side:", "",
        "| iter | method | scored | A4 | A4 P / R | A5 | A5 P / R | precision@k | recall@k | base rate | unparseable |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
  for t, ms in summary["methods"].items():
    for m, e in ms.items():
      L.append(f"| {t} | {m} | {e['scored']} | {e['A4']} | {_f(e.get('A4_precision'), 2)} / {_f(e.get('A4_recall'), 2)} | "
               f"{e['A5']} | {_f(e.get('A5_precision'), 2)} / {_f(e.get('A5_recall'), 2)} | {_f(e.get('precision'))} | "
               f"{_f(e.get('recall'))} | {_f(e.get('base_rate'))} | {e['unparseable']} |")
  gen = {t: ms["generate"] for t, ms in summary["methods"].items() if "generate" in ms}
  if gen:
    L += ["", "`generate` ratings by route (parsed: a `Score: k` in the text; fallback: read from p(1..5) after "
          "the reasoning; none: unrated, only with `curate.fallback` off): " + "; ".join(
            f"iter {t}: " + ", ".join(f"{k} {n}" for k, n in e["routes"].items()) + f" (parse rate {_f(e['parse_rate'])})"
            for t, e in gen.items()), ""]
  if "ratings.png" in plots:
    L += ["### Rating histograms", "", "![ratings](ratings.png)", ""]
  if "backward" in summary:
    b = summary["backward"]
    L += ["## Backward model (instruction quality)", "",
          f"On {b['good_segments']} good segments, the generated instruction asks exactly the latent task in "
          f"{_f(b['asks_latent_task'])} of cases (verbatim phrasing {_f(b['exact_latent_phrasing'])}); "
          f"{_f(b['well_formed_all'])} of all candidates' instructions are well formed.", ""]
  L += ["## Held-out accuracy", "", "| model | accuracy | by family |", "|---|---|---|"]
  for k, v in summary["eval"].items():
    fam = summary.get("eval_by_family", {}).get(k, {})
    L.append(f"| {k} | {_f(v)} | {', '.join(f'{f} {_f(x, 2)}' for f, x in fam.items())} |")
  if summary.get("eval_paired"):
    L += ["", "Paired on the same items (McNemar's exact test: only the items where the two models disagree "
          "count; p is two-sided):", "", "| comparison | wins | losses | ties | p |", "|---|---|---|---|---|"]
    for k, e in summary["eval_paired"].items():
      L.append(f"| {k.replace('_vs_', ' vs ')} | {e['wins']} | {e['losses']} | {e['ties']} | {e['p_value']:.2g} |")
  if "accuracy.png" in plots:
    L += ["", "![accuracy](accuracy.png)"]
  if "loss.png" in plots:
    L += ["", "## Loss curves", "", "![loss](loss.png)"]
  L += ["", export.dataset_card(ctx, summary), "",
        "## Stage times (s)", "", ", ".join(f"{k} {_f(v, 1)}" for k, v in summary["stage_seconds"].items()), ""]
  return "\n".join(L)


def write_report(ctx) -> dict:
  summary = build_summary(ctx)
  export.export_curated(ctx)
  plots = _plots(ctx, summary)
  records.write_bytes_atomic(ctx.path("report/report.md"), render(ctx, summary, plots).encode())
  records.write_json(ctx.path("report/summary.json"), summary)
  return summary

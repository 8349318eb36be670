"""`--stage=scaling`: the data-scaling experiment on a finished run (shared HUMPBACK.md, "data scaling").

For each N of `scaling.sizes`: the first N examples of a seeded shuffle of `scaling.data`
(hb_jax.eval.scaling.nested_subsets, so smaller sets are subsets of larger ones), a model trained from the
base for that size's steps (models/scaling/n{N}, a model folder), its score from an evaluator (on the demo
world: held-out accuracy in percent, the `evaluate` stage's generation and the report's checker), then
w = alpha * log N + C by least squares over the sizes -> scaling/fit.json and scaling/scaling.png.

Why an on-demand runner stage and not a separate tool: it needs what the runner already gives every stage
(config validation and overrides, the upstream check that curate_t is done, the manifest's refusal of a
changed config, multi-process launch), but it is an experiment beside the method, so `plan()` never lists
it and `make demo` never runs it; `--stage=scaling` (or `--restart_from=scaling`) adds it.

Resume granularity is one size. Each size writes, in this order:
  scaling/n{N}/spec.json       what the size depends on: `train` (the subset's ids, steps, the training
                               config, the base model) and `eval` (evaluate config, inference tags, held-out set)
  scaling/n{N}/train.jsonl     the subset (provenance)
  models/scaling/n{N}/         the model folder; its model.json is the commit marker (checkpoints of an
                               unfinished run: work/train/scaling/n{N}, resumed on rerun)
  scaling/n{N}/heldout.jsonl   the evaluator's generations (committed in chunks under parts/)
  scaling/n{N}/result.json     the score; committed last, so it marks the size finished
A rerun reuses a finished model whose `train` spec is unchanged and a result whose whole spec is unchanged;
a size whose spec changed is cleared and redone. The manifest still refuses a finished stage whose config
changed; `--restart_from=scaling` then removes only the fit and redoes what changed (a size added to the
list trains that size alone).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
from typing import Any, Callable, Mapping, Sequence

from etils import epath

from hb_jax import model_folder
from hb_jax.config import ConfigError
from hb_jax.data import records
from hb_jax.eval import scaling as fitlib
from hb_jax.pipeline.config import PipelineConfig, section
from hb_jax.pipeline.manifest import diff_keys, file_hash, stable_hash

log = logging.getLogger(__name__)

# Config sections the stage's outputs depend on (hashed into the manifest by the runner).
KEYS = ("scaling", "train", "evaluate", "ablation.tags", "curate.k", "curate.method")
# What --restart_from=scaling (or a restart under a changed config) removes: the fit only. Per-size work
# is validated against its own spec.json instead, so unchanged sizes are not retrained.
CLEAN = ("scaling/fit.json", "scaling/scaling.png")
CURATED = ("curated", "curated+seed")

# An evaluator maps (model folder, a folder for its own outputs) to {"score": float, ...}; the rest of the
# mapping is stored in the size's result.json. Every process calls it (generation is sharded over processes); only
# process 0's answer is used, and non-writers may return {}.
Evaluation = Mapping[str, Any]
Evaluator = Callable[[epath.Path, epath.Path], Evaluation]


def iteration(cfg: PipelineConfig) -> int:
  return cfg.scaling.iteration or cfg.curate.iterations


def upstream(cfg: PipelineConfig) -> tuple[str, ...]:
  """prepare (base model, held-out set) and, for curated data, the curate stage that wrote it."""
  sc = cfg.scaling
  if sc.data not in CURATED:
    return ("prepare",)
  if not cfg.ablation.curation:
    raise ConfigError(f"scaling.data={sc.data!r} needs the curated sets, but ablation.curation is False; set "
                      "scaling.data to a JSONL of pairs instead")
  t = iteration(cfg)
  if t > cfg.curate.iterations:
    raise ConfigError(f"scaling.iteration={t}: the run has only {cfg.curate.iterations} curation iteration(s)")
  return ("prepare", f"curate_{t}")


def load_pool(ctx) -> tuple[list[dict], str]:
  """The examples to subsample and a description of where they came from."""
  from hb_jax.pipeline import stages
  sc = ctx.cfg.scaling
  if sc.data in CURATED:
    t = iteration(ctx.cfg)
    pool = stages.curated(ctx, t)
    where = f"curate/iter{t} (k={ctx.cfg.curate.k}, {ctx.cfg.curate.method})"
    if sc.data == "curated+seed":
      pool = list(records.read_pairs(ctx.path("data/seed.jsonl"))) + pool
      where = f"data/seed.jsonl + {where}"
    return pool, where
  path = epath.Path(sc.data)
  if records.is_local(sc.data) and not path.is_absolute():
    path = ctx.workdir / sc.data
  if not path.exists():
    raise FileNotFoundError(f"scaling.data: expected a JSONL of pairs, found no file at {path}")
  return list(records.read_pairs(path)), str(path)


def size_steps(cfg: PipelineConfig) -> dict[int, int]:
  """N -> optimizer steps: scaling.steps in order, else the paper's steps for N."""
  sc = cfg.scaling
  if sc.steps:
    return dict(zip(sc.sizes, sc.steps))
  paper = dataclasses.replace(cfg.train, num_steps=0, num_epochs=0.0)
  return {n: paper.steps_for(n) for n in sc.sizes}


def inference_tag_mode(cfg: PipelineConfig, pool: Sequence[Mapping[str, Any]]) -> str:
  """The `evaluate` stage's rule: 'both' tags for models trained on seed + augmented data, and a model that
  saw one source asked in that source's format. Decided once from the whole pool (not per subset), so every
  size is asked the same way."""
  mode = cfg.evaluate.tag_mode if cfg.ablation.tags else "none"
  sources = {r.get("source", "seed") for r in pool}
  if mode == "both" and len(sources) == 1 and sources <= {"seed", "augmented"}:
    return sources.pop()
  return mode


# ------------------------------------------------------------------------------------------- evaluation
def heldout_accuracy(ctx, tag_mode: str) -> tuple[Evaluator, dict[str, Any]]:
  """The demo world's evaluator: greedy answers to data/heldout.jsonl (the `evaluate` stage's prompts and
  decoding), checked against truth/ with synthetic.check (the report's accuracy), in percent. Returns the
  evaluator and what its scores depend on (for the size specs)."""
  e = ctx.cfg.evaluate
  truth_path, world_path = ctx.path("truth/heldout.jsonl"), ctx.path("truth/world.json")
  if not (truth_path.exists() and world_path.exists()):
    raise FileNotFoundError(
      f"scaling: held-out accuracy needs the demo world's hidden answers ({truth_path}, {world_path}), found "
      "none (inputs.kind='files' has no checker); call hb_jax.pipeline.scaling.run_sizes with an evaluator "
      "of your own (model folder -> score)")
  held = list(records.read_jsonl(ctx.path("data/heldout.jsonl"), ("id", "instruction")))
  if e.max_items:
    held = held[:e.max_items]
  # Each id once: the demo world repeats some held-out instructions (same id), and the chunk merge emits
  # every output of an id for every occurrence of it, which would count a repeated item k^2 times.
  seen: set[str] = set()
  held = [h for h in held if not (h["id"] in seen or seen.add(h["id"]))]
  truth = {r["id"]: r for r in records.read_jsonl(truth_path)}
  capitals = json.loads(world_path.read_text())["capitals"]
  missing = [h["id"] for h in held if h["id"] not in truth]
  if missing:
    raise ValueError(f"scaling: {len(missing)} held-out ids have no answer in {truth_path} (e.g. {missing[:3]})")

  def evaluate(model_dir: epath.Path, out_dir: epath.Path) -> Evaluation:
    from hb_jax.data.synthetic import check
    gens = generate_answers(ctx, model_dir, held, tag_mode, out_dir)
    if not ctx.is_writer:
      return {}
    per_family: dict[str, list[bool]] = collections.defaultdict(list)
    for g in gens:
      h = truth[g["id"]]
      per_family[h["family"]].append(check(h, g["output"], capitals))
    flat = [x for v in per_family.values() for x in v]
    acc = sum(flat) / len(flat)
    return {"score": 100.0 * acc, "accuracy": acc, "items": len(flat),
            "by_family": {f: sum(v) / len(v) for f, v in sorted(per_family.items())}}

  depends = {"evaluator": "heldout_accuracy", "evaluate": section(ctx.cfg, "evaluate"), "tag_mode": tag_mode,
             "heldout": stable_hash([h["id"] for h in held])}
  return evaluate, depends


def generate_answers(ctx, model_dir: epath.Path, held: list[dict], tag_mode: str, out_dir: epath.Path) -> list[dict]:
  """Greedy answers of the model in `model_dir` to `held` (the prompts and decoding of the `evaluate`
  stage), sharded over processes and committed in chunks under out_dir/parts; returns the merged rows on
  process 0 (others: [])."""
  from hb_jax.pipeline import stages
  lm = ctx.load_folder(model_dir)
  out = out_dir / "heldout.jsonl"
  stages.heldout_answers(ctx, lm, held, tag_mode, out_dir / "parts", "heldout", out, model=_rel(ctx, model_dir),
                         desc=f"scaling evaluate {model_dir.name}")
  return list(records.read_jsonl(out)) if ctx.is_writer else []


# ------------------------------------------------------------------------------------------------ sizes
def _rel(ctx, path: epath.Path) -> str:
  try:
    return str(path.relative_to(ctx.workdir))
  except ValueError:
    return str(path)


def _read_committed_json(path: epath.Path) -> Any:
  return json.loads(path.read_text()) if records.is_committed(path) else None


def _remove(path: epath.Path) -> None:
  if path.is_dir():
    path.rmtree()
  elif path.exists():
    path.unlink()
  marker = records.commit_marker(path)
  if marker.exists():
    marker.unlink()


def run_sizes(ctx, pool: Sequence[dict], steps: Mapping[int, int], evaluator: Evaluator,
              eval_depends: Mapping[str, Any]) -> list[dict]:
  """Trains and evaluates one model per size (reusing finished ones; see the module docstring) and returns
  each size's result (n, steps, score, ...), smallest N first."""
  from hb_jax.train.finetune import finetune
  sc = ctx.cfg.scaling
  subsets = fitlib.nested_subsets(list(pool), list(steps), sc.seed)
  base = ctx.model_dir("base")
  base_hash = ctx.manifest.outputs("prepare").get("models/base") or str(base)
  results = []
  for n, subset in subsets.items():
    d, model = ctx.path(f"scaling/n{n}"), ctx.path(f"models/scaling/n{n}")
    train_dir = ctx.path(f"work/train/scaling/n{n}")
    tc = dataclasses.replace(ctx.cfg.train, num_steps=steps[n], tag_mode=ctx.train_tag_mode)
    spec = {"train": {"n": n, "steps": steps[n], "subset": stable_hash([[r["id"], r.get("source")] for r in subset]),
                      "subset_seed": sc.seed, "train": dataclasses.asdict(tc), "base": base_hash},
            "eval": dict(eval_depends)}
    spec = json.loads(json.dumps(spec))  # as it reads back from spec.json (tuples -> lists), for comparison
    if ctx.is_writer:
      old = _read_committed_json(d / "spec.json")
      if old is not None and isinstance(old.get("train", {}).get("train"), dict):
        # A spec written under an earlier key layout (train.mesh_*), read in today's.
        from hb_jax.pipeline.config import upgrade_section
        old["train"]["train"] = upgrade_section(old["train"]["train"], "train")
      if old is None or old.get("train") != spec["train"]:
        # No spec: nothing here can be trusted (e.g. scaling/ was deleted but models/scaling/ was not).
        if old is not None:
          log.warning("scaling n=%d: training settings changed (%s); retraining it", n,
                      ", ".join(diff_keys(old.get("train"), spec["train"])))
        for p in (d, model, train_dir):
          _remove(p)
      elif old is not None and old.get("eval") != spec["eval"]:
        log.warning("scaling n=%d: evaluation settings changed (%s); re-evaluating it", n,
                    ", ".join(diff_keys(old.get("eval"), spec["eval"])))
        for p in (d / "result.json", d / "heldout.jsonl", d / "parts"):
          _remove(p)
      if old != spec:
        records.write_jsonl(d / "train.jsonl", subset)
        records.write_json(d / "spec.json", spec)
    ctx.barrier(f"scaling-spec-{n}")
    result = _read_committed_json(d / "result.json")
    if result is not None:
      if ctx.is_writer:
        print(f"[hb_jax] scaling N={n}: finished before, score {result['score']:.3f} (reused)", flush=True)
      results.append(result)
      continue
    trained = False
    if not model_folder.is_model_folder(model):
      res = finetune(tc, base, d / "train.jsonl", model, train_dir, records=subset, overwrite=True,
                     attention=ctx.cfg.model.attention)
      if not res.completed:
        raise RuntimeError(f"scaling: training of {model} stopped at step {res.step} of {res.num_steps} "
                           "(preempted); rerun to continue from its checkpoint")
      trained = True
    ctx.barrier(f"scaling-trained-{n}")
    evaluation = dict(evaluator(model, d))
    if ctx.is_writer:
      if not isinstance(evaluation.get("score"), (int, float)):
        raise TypeError(f"scaling: the evaluator returned {sorted(evaluation)} for {model}; expected a numeric "
                        "'score'")
      result = {**evaluation, "n": n, "steps": steps[n], "score": float(evaluation["score"]),
                "model": _rel(ctx, model), "spec": stable_hash(spec)}
      records.write_json(d / "result.json", result)
      print(f"[hb_jax] scaling N={n}: {'trained ' + str(steps[n]) + ' steps' if trained else 'model reused'}, "
            f"score {result['score']:.3f}", flush=True)
    ctx.barrier(f"scaling-done-{n}")
    results.append(_read_committed_json(d / "result.json"))
  return results


def write_fit(ctx, results: Sequence[Mapping[str, Any]], extra: Mapping[str, Any], ylabel: str) -> fitlib.ScalingFit:
  """scaling/fit.json and scaling/scaling.png from the sizes' results (process 0 writes)."""
  sc = ctx.cfg.scaling
  ns, scores = [r["n"] for r in results], [r["score"] for r in results]
  fit = fitlib.fit_log_scaling(ns, scores, confidence=sc.confidence, log_base=sc.log_base)
  if ctx.is_writer:
    summary = fitlib.fit_summary(ns, scores, fit, {**extra, "sizes": list(results)})
    records.write_bytes_atomic(ctx.path("scaling/scaling.png"), fitlib.plot_scaling(ns, scores, fit, ylabel=ylabel))
    records.write_json(ctx.path("scaling/fit.json"), summary)
  return fit


def run_stage(ctx) -> dict[str, str]:
  """The runner's `scaling` stage: pool, sizes, evaluator, models, fit; returns the manifest outputs."""
  sc = ctx.cfg.scaling
  pool, where = load_pool(ctx)
  steps = size_steps(ctx.cfg)
  fitlib.check_sizes(sc.sizes, len(pool), where=f"scaling.sizes (data: {where})")
  tag_mode = inference_tag_mode(ctx.cfg, pool)
  evaluator, depends = heldout_accuracy(ctx, tag_mode)  # fails before any training when there is no checker
  results = run_sizes(ctx, pool, steps, evaluator, depends)
  extra = {"score_name": "held-out accuracy (%) on the demo world", "data": where, "pool": len(pool),
           "subset_seed": sc.seed, "inference_tag_mode": tag_mode}
  fit = write_fit(ctx, results, extra, ylabel="held-out accuracy (%)")
  ctx.barrier("scaling-fit")
  if ctx.is_writer:
    print(f"[hb_jax] scaling: {fit.describe()}; {ctx.path('scaling/fit.json')}, {ctx.path('scaling/scaling.png')}",
          flush=True)
  from hb_jax.pipeline.stages import model_hash
  outs = {rel: file_hash(ctx.path(rel)) for rel in CLEAN}
  outs.update({f"models/scaling/n{r['n']}": model_hash(ctx.path(f"models/scaling/n{r['n']}")) for r in results})
  return outs

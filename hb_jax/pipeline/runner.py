"""Orders the stages, checks each against the manifest, and runs what is not done.

For every stage: the config subset it depends on and the output hashes of its upstream stages are compared
with the manifest. Done and unchanged: skipped. Done but changed: refused (StageConfigChanged names the
stage and the keys) unless `restart_from` names it or an earlier stage, which forgets that stage and every
later one and deletes their outputs. Half done: resumed (bulk stages skip committed chunks, training resumes
from its last checkpoint); half done under a changed config: its partial outputs are cleared first.
A lone stage (--stage) also refuses when a finished stage upstream of it was done under other settings
(LAYOUT_FIELDS aside: batch sizes, meshes, checkpointing and logging may differ between stages). A full run
refuses up front a finished stage that reads one it has still to do (a config that adds stages).
On-demand stages (ON_DEMAND: `scaling`) are planned only when --stage or --restart_from names them, after
the method's stages, so a plain run never starts them.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Sequence

from etils import epath

from hb_jax.config import RUN_NEUTRAL_FIELDS
from hb_jax.pipeline import stages as S
from hb_jax.pipeline.config import PipelineConfig, section
from hb_jax.pipeline.manifest import Manifest, StageConfigChanged, as_today, diff_keys

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  keys: tuple[str, ...]  # config sections the stage's outputs depend on
  upstream: tuple[str, ...]
  run: Callable[[S.Context], dict]
  clean: tuple[str, ...]  # workdir paths removed when the stage is redone from scratch
  ignore: tuple[str, ...] = ()  # dotted fields inside `keys` that its outputs do not depend on


def plan(cfg: PipelineConfig) -> list[Stage]:
  """The stages of a run, in order."""
  iters = cfg.curate.iterations if cfg.ablation.curation else 1
  pre_keys = ("inputs", "base") + (("curate.header",) if cfg.inputs.kind == "synthetic" else ())
  out = [
    Stage("prepare", pre_keys, (), S.prepare, ("data", "truth", "models/base", "work/pretrain", "work/tokenizer")),
    # Tags mark the forward data only: the backward model sees them only when trained jointly with it.
    Stage("backward", ("backward", "ablation.joint") + (("ablation.tags", "train") if cfg.ablation.joint else ()),
          ("prepare",), S.backward, ("models/backward", "work/train/backward", "work/data/backward.jsonl",
                                     "work/data/joint.jsonl")),
    Stage("augment", ("augment", "curate.header"), ("prepare", "backward"), S.augment, ("augment",)),
    Stage("seed", ("train", "ablation.tags", "ablation.joint"), ("prepare",) + (("backward",) if cfg.ablation.joint else ()),
          S.seed_model, ("models/m0", "work/train/m0", "work/data/m0.jsonl")),
  ]
  trained = []
  for t in range(1, iters + 1):
    if cfg.ablation.curation:
      rater = "seed" if t == 1 else f"train_{t - 1}"
      # Scores (and the fixed A4/A5 sets) do not depend on the threshold k or on how many iterations follow.
      out.append(Stage(f"curate_{t}", ("curate", "ablation.tags"), ("augment", rater),
                       lambda ctx, t=t: S.curate(ctx, t), (f"curate/iter{t}",),
                       ignore=("curate.k", "curate.iterations")))
      up = (f"curate_{t}", "prepare")
    else:
      up = ("augment", "prepare")
    out.append(Stage(f"train_{t}", ("train", "curate.k", "curate.method", "ablation"), up,
                     lambda ctx, t=t: S.train_iteration(ctx, t),
                     (f"models/m{t}", f"work/train/m{t}", f"curate/iter{t}/train.jsonl")))
    trained.append(f"train_{t}")
  if cfg.ablation.baselines and cfg.ablation.curation:
    out.append(Stage("no_curation", ("train", "ablation.tags"), ("augment", "prepare"), S.no_curation,
                     ("models/no_curation", "work/train/no_curation", "work/data/no_curation.jsonl")))
    trained.append("no_curation")
  out.append(Stage("evaluate", ("evaluate", "ablation"), ("prepare", "seed", *trained), S.evaluate, ("evaluate",)))
  out.append(Stage("report", ("curate", "ablation", "name"), tuple(s.name for s in out), S.report, ("report",)))
  return out


# Stages beside the method that a run plans only when --stage or --restart_from names them.
ON_DEMAND = ("scaling",)


def on_demand(cfg: PipelineConfig, name: str) -> Stage:
  """The on-demand stage `name` (built only when asked for, so its config is checked only then)."""
  if name == "scaling":
    from hb_jax.pipeline import scaling
    return Stage("scaling", scaling.KEYS, scaling.upstream(cfg), scaling.run_stage, scaling.CLEAN)
  raise ValueError(f"no on-demand stage {name!r}; expected one of {ON_DEMAND}")


def stage_names(cfg: PipelineConfig) -> list[str]:
  return [s.name for s in plan(cfg)] + list(ON_DEMAND) + ["finetune"]


def _config_subset(cfg: PipelineConfig, keys: Sequence[str], ignore: Sequence[str] = ()) -> dict:
  out = {k: section(cfg, k) for k in keys}
  for dotted in ignore:
    key = next(k for k in keys if dotted.startswith(k + "."))
    node = out[key] = dict(out[key])
    node.pop(dotted[len(key) + 1:])
  return out


def _inputs(manifest: Manifest, st: Stage) -> dict[str, str]:
  """The output hashes of a stage's upstream stages, as recorded when they finished."""
  return {f"{u}:{k}": v for u in st.upstream for k, v in sorted(manifest.outputs(u).items())}


def _check_finished(manifest: Manifest, cfg: PipelineConfig, stages: Sequence[Stage]) -> None:
  """Raises StageConfigChanged for a finished stage among `stages` that this config would redo."""
  for st in stages:
    if manifest.is_done(st.name):
      manifest.check(st.name, _config_subset(cfg, st.keys, st.ignore), _inputs(manifest, st))


# Config fields that say how a stage runs (devices, batching, checkpoints, logging), not what it computes:
# under other values a stage's results agree up to float summation order, except that training with dropout
# draws its masks per row, so another row layout gives a model equal in distribution, not in weights. A lone
# stage may read an upstream stage done under other values of these: docs/launch.md runs training stages on
# one slice and sampling stages on another, each with its own layout.
LAYOUT_FIELDS = frozenset(RUN_NEUTRAL_FIELDS) | {
  "batch", "chunk_records", "micro_batches", "rows_per_micro_batch", "remat", "loss_chunk"}


def _check_upstream(manifest: Manifest, cfg: PipelineConfig, only: str, stages: Sequence[Stage]) -> None:
  """Raises StageConfigChanged when a finished stage that `only` reads from was done under other settings
  than this config's (layout fields aside) or on other inputs."""
  for st in stages:
    if not manifest.is_done(st.name):
      continue
    entry = manifest.entry(st.name)
    config = _config_subset(cfg, st.keys, st.ignore)
    changed = [k for k in diff_keys(as_today(entry.get("config", {}), config), config)
               if not LAYOUT_FIELDS.intersection(k.split("."))]
    changed_inputs = diff_keys(entry.get("inputs", {}), _inputs(manifest, st))
    if changed or changed_inputs:
      what = ([f"config keys changed: {', '.join(changed)}"] if changed else []) + (
        [f"inputs changed: {', '.join(changed_inputs)}"] if changed_inputs else [])
      raise StageConfigChanged(
        f"--stage={only} reads the outputs of stage {st.name!r}, which is done under a different setup "
        f"({'; '.join(what)}) in {manifest.path}; its result would belong to neither. Rerun with "
        f"--restart_from={st.name} to redo that stage and every later one, or restore its settings.")


def _check_no_done_stage_awaits_upstream(manifest: Manifest, stages: Sequence[Stage]) -> None:
  """A finished stage that reads a stage this run has still to do (one a config change added, e.g. more
  curate.iterations before evaluate) would be refused once that stage is done, hours later: refuse now."""
  done = {s.name for s in stages if manifest.is_done(s.name)}
  for st in stages:
    pending = [u for u in st.upstream if u not in done]
    if st.name in done and pending:
      raise StageConfigChanged(
        f"stage {st.name!r} is done but reads {pending}, which this config adds and this run has still to do "
        f"(manifest {manifest.path}); rerun with --restart_from={st.name} to do them and redo {st.name!r} and "
        "every later stage, or restore the previous settings.")


def _upstream_closure(stages: Sequence[Stage], name: str) -> list[Stage]:
  """Every stage that `name` reads from, directly or through others, in plan order."""
  by_name = {s.name: s for s in stages}
  needed, todo = set(), list(by_name[name].upstream)
  while todo:
    u = todo.pop()
    if u not in needed:
      needed.add(u)
      todo.extend(by_name[u].upstream)
  return [s for s in stages if s.name in needed]


def _remove(ctx: S.Context, rel: str) -> None:
  p = ctx.path(rel)
  if p.is_dir():
    p.rmtree()
  elif p.exists():
    p.unlink()


@dataclasses.dataclass
class RunResult:
  ran: list[str]
  skipped: list[str]
  seconds: dict[str, float]


def run(cfg: PipelineConfig, workdir, *, only: str | None = None, restart_from: str | None = None,
        share=None) -> RunResult:
  """Runs the pipeline (or the stage `only`) in `workdir`; see the module docstring."""
  from hb_jax.jobs import Share
  share = share or Share()
  workdir = epath.Path(workdir)
  if share.index == 0:
    workdir.mkdir(parents=True, exist_ok=True)
  stages = plan(cfg)
  names = [s.name for s in stages]
  for flag, value in (("--stage", only), ("--restart_from", restart_from)):
    if value is not None and value not in names + list(ON_DEMAND):
      raise ValueError(f"{flag}={value!r}: expected one of {names + list(ON_DEMAND)} (finetune is launched "
                       "separately)")
  for name in ON_DEMAND:  # after the method's stages, and only when named
    if name in (only, restart_from):
      stages.append(on_demand(cfg, name))
  names = [s.name for s in stages]
  manifest = Manifest(workdir, writer=share.index == 0)
  ctx = S.Context(cfg, workdir, manifest, share)
  if restart_from is not None:
    later = names[names.index(restart_from):]
    if only is None:
      # The stages before restart_from will be checked anyway: check them before deleting anything, so a
      # config change that an earlier stage refuses does not cost the later stages' outputs.
      _check_finished(manifest, cfg, stages[:names.index(restart_from)])
    if share.index == 0:
      for s in stages[names.index(restart_from):]:
        for rel in s.clean:
          _remove(ctx, rel)
      manifest.forget(later)
    ctx.barrier("restart")
    manifest = ctx.manifest = Manifest(workdir, writer=share.index == 0)
    log.info("restart_from=%s: forgot %s", restart_from, later)
  if only is not None:
    # A lone stage reads its upstream stages' outputs: they must be what this config would produce, or
    # its result would belong to neither setup.
    _check_upstream(manifest, cfg, only, _upstream_closure(stages, only))
  else:
    _check_no_done_stage_awaits_upstream(manifest, stages)
  ran, skipped, seconds = [], [], {}
  for st in stages:
    if only is not None and st.name != only:
      continue
    missing = [u for u in st.upstream if not manifest.is_done(u)]
    if missing:
      raise RuntimeError(f"stage {st.name!r} needs {missing} done first (manifest {manifest.path}); run without "
                         "--stage, or run those stages")
    config = _config_subset(cfg, st.keys, st.ignore)
    inputs = _inputs(manifest, st)
    state = manifest.check(st.name, config, inputs)
    if state == "done":
      skipped.append(st.name)
      log.info("stage %s: done, skipping", st.name)
      continue
    if state == "restart" and share.index == 0:
      log.warning("stage %s: half done under another config; clearing its partial outputs", st.name)
      for rel in st.clean:
        _remove(ctx, rel)
    ctx.barrier(f"start-{st.name}")
    log.info("stage %s: %s", st.name, "resuming" if state == "resume" else "running")
    manifest.start(st.name, config, inputs)
    t0 = time.time()
    outputs = st.run(ctx)
    seconds[st.name] = time.time() - t0
    manifest.finish(st.name, outputs, {"seconds": round(seconds[st.name], 2)})
    ctx.barrier(f"done-{st.name}")
    ran.append(st.name)
    print(f"[hb_jax] stage {st.name} done in {seconds[st.name]:.1f}s", flush=True)
  return RunResult(ran, skipped, seconds)


__all__ = ["plan", "run", "stage_names", "StageConfigChanged", "RunResult"]

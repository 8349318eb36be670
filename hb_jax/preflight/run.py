"""Compile every program of a run for a target and measure it: `preflight(...) -> Report`.

For each program (hb_jax.preflight.programs) the compiler's own figures per device:
  HBM       memory_analysis(): arguments, outputs, the part of the outputs that reuses donated arguments
            (aliased), temporaries, generated code; total = arguments + outputs - aliased + temporaries + code,
            what the program holds at its peak. Arguments are also summed per group (params, state, cache,
            inputs) from the compiled input layouts (shard shapes padded to their TPU tiles), which add up to
            the compiler's argument bytes.
  FLOPs     cost_analysis() with every loop body counted by its trip count (hb_jax.preflight.hlo_cost);
            bytes accessed the same way. A loop whose trip count is decided at run time (decode) is counted
            once: that figure is per decode step.
Beside each: hb_jax.estimate's figure (hb_jax.preflight.programs), and whether the total fits the device's HBM
as the compiler counts it. A program the TPU compiler refuses for memory is reported with the bytes it needed.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from hb_jax.config import ConfigError, ModelConfig
from hb_jax.preflight import hlo_cost, programs as prog, topology


@dataclasses.dataclass
class Measured:
  stage: str
  program: str
  devices: int
  shape: str
  estimate: dict[str, Any]
  estimate_flops: float | None
  hbm: dict[str, float] | None = None  # None: refused by the compiler (see needed_bytes)
  groups: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
  needed_bytes: float | None = None  # the compiler's figure when it refused the program for memory
  flops: float | None = None
  bytes_accessed: float | None = None
  xla_flops: float | None = None  # cost_analysis() as XLA reports it: every loop body once
  compile_s: float = 0.0
  fits: bool = True
  same_as: str = ""  # the stage whose identical program this row repeats (compiled once)
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def total_bytes(self) -> float:
    return self.hbm["total"] if self.hbm else (self.needed_bytes or 0.0)


@dataclasses.dataclass
class Restore:
  stage: str
  layout: str  # train | serve
  devices: int
  bytes: dict[str, float]
  fits: bool


@dataclasses.dataclass
class Report:
  config: str
  model: str
  target: topology.Target
  programs: list[Measured]
  restores: list[Restore]
  notes: list[str]

  @property
  def chip_hbm_bytes(self) -> float | None:
    return self.target.hbm_bytes

  @property
  def misfits(self) -> list[Measured]:
    return [m for m in self.programs if not m.fits and not m.same_as]

  def to_dict(self) -> dict[str, Any]:
    from hb_jax.preflight.report import to_dict
    return to_dict(self)


# ------------------------------------------------------------------------------------------------ models
def serving_model(loaded) -> tuple[ModelConfig, str]:
  """(the model the run's stages load, how it was decided): the base model folder's model.json when readable;
  else, for runs on files, the config's preset in bfloat16 (configs/llama_common.py: convert with
  --param_dtype bfloat16; every model a run trains keeps the base's dtype); synthetic runs: their preset."""
  pcfg = loaded.pipeline
  if pcfg.inputs.kind == "files":
    from etils import epath
    mj = epath.Path(pcfg.inputs.base_model) / "model.json"
    try:
      if mj.exists():
        return ModelConfig.from_json(mj.read_text(), str(mj)), f"model.json of {pcfg.inputs.base_model}"
    except OSError:
      pass
    return (dataclasses.replace(loaded.model, param_dtype="bfloat16"),
            f"preset {loaded.model_name} with bfloat16 params (no readable {mj})")
  return loaded.model, f"preset {loaded.model_name}"


def default_topology(loaded) -> str:
  """The config variant's slice when it is a TPU one ('v4-32 (16 chips, 4 hosts)' -> v4-32), else cpu-<chips>."""
  word = (loaded.slice or "").split(" ")[0]
  try:
    if topology.parse(word)[0] == "tpu":
      return word
  except ConfigError:
    pass
  return f"cpu-{loaded.chips or 1}"


# ------------------------------------------------------------------------------------------------ stages
def stage_programs(pcfg, est, serve_cfg: ModelConfig, target, serve: prog.ServeSetup | None) -> list[prog.Program]:
  """Every program of every stage of the estimate's walk, in order."""
  from hb_jax.estimate.assumptions import Lengths
  out: list[prog.Program] = []
  lengths = Lengths(est.assumptions, pcfg.ablation.tags)
  for s in est.stages:
    name, _, method = s.stage.partition(" ")
    if s.kind == "train":
      tc = pcfg.backward if name == "backward" and not pcfg.ablation.joint else pcfg.train
      out.append(prog.train_program(s.stage, s, tc, serve_cfg, target))
    elif s.kind == "generate":
      section = pcfg.augment if name == "augment" else pcfg.evaluate if name == "evaluate" else pcfg.curate
      out += prog.generate_programs(s.stage, s, serve, section.sampling, section.batch, target, pcfg.page_size)
    else:
      # generate's fallback is the digits forward after the reasoning: up to max_new_tokens more per row.
      extra = pcfg.curate.sampling.max_new_tokens if method == "fallback" else 0
      out += prog.score_programs(s.stage, "digits" if method == "fallback" else method or pcfg.curate.method, serve,
                                 lengths, pcfg.curate.batch, target, buckets=pcfg.length_buckets, extra_tokens=extra)
  return out


def preflight(spec: str, overrides: Sequence[str] = (), topology_name: str | None = None, *,
              model: ModelConfig | None = None, stages: Sequence[str] | None = None) -> Report:
  """Compiles every stage's programs of the config `spec` (configs/X.py[:variant]) with `overrides`
  (a.b=value) for `topology_name` (default: the variant's slice); `model` replaces the model the run would
  load, `stages` keeps only those stages (names as the estimate prints them, or their first word)."""
  from hb_jax import estimate as est_lib
  loaded = est_lib.load_config(spec, overrides=overrides)
  serve_cfg, source = (model, "given") if model is not None else serving_model(loaded)
  serve_cfg = dataclasses.replace(serve_cfg, attention=loaded.pipeline.model.attention)
  target = topology.target(topology_name or default_topology(loaded))
  notes = [f"model: {source}", f"attention: {serve_cfg.attention} (--config.model.attention)"]
  if target.platform == "cpu":
    notes.append(f"XLA:CPU figures for {len(target.devices)} simulated devices (no TPU compiler): the programs "
                 "compute in float32 ('auto' dtype on CPU), so activations and caches take twice their bf16 "
                 "bytes, and no device limit is checked")
  hw = est_lib.hardware(target.hardware or loaded.hardware)
  hw = dataclasses.replace(hw, chips_per_host=len(target.local_devices),
                           memory=target.hbm_bytes or hw.memory)
  compute_bytes = 4.0 if target.platform == "cpu" else 2.0
  assumptions = est_lib.Assumptions(weight_bytes=jnp.dtype(serve_cfg.param_dtype).itemsize, kv_bytes=compute_bytes)
  est = est_lib.estimate(loaded.pipeline, serve_cfg, hw, len(target.devices), assumptions, config_name=spec,
                         model_name=loaded.model_name)
  if stages:
    known = [s.stage for s in est.stages]
    unknown = [n for n in stages if not any(n in (k, k.split(" ")[0]) for k in known)]
    if unknown:
      raise ConfigError(f"--stages: {unknown[0]!r} is no stage of this run; its stages: {', '.join(known)}")
    est.stages = [s for s in est.stages if s.stage in stages or s.stage.split(" ")[0] in stages]
  needs_serving = any(s.kind != "train" for s in est.stages)
  serve = prog.ServeSetup.make(serve_cfg, loaded.pipeline, target) if needs_serving else None
  planned = stage_programs(loaded.pipeline, est, serve_cfg, target, serve)
  measured, done, outputs = [], {}, {}
  for p in planned:
    if p.key in done:
      first = done[p.key]
      measured.append(dataclasses.replace(first, stage=p.stage, same_as=first.stage, compile_s=0.0,
                                          shape=p.shape, notes=list(first.notes)))
      continue
    m = compile_one(p, target, outputs)
    done[p.key] = m
    measured.append(m)
  restores = restore_rows(loaded.pipeline, est, serve_cfg, target, serve)
  return Report(spec, loaded.model_name, target, measured, restores, notes)


def restore_rows(pcfg, est, serve_cfg: ModelConfig, target, serve) -> list[Restore]:
  """Peak bytes per device of restoring a stage's model folder onto its mesh (analytic, from the shard shapes),
  one row per layout (stages restoring onto the same one are listed together)."""
  from hb_jax.parallel import SERVE_RULES, TRAIN_RULES, make_mesh, with_overrides
  from hb_jax.train import loop
  rows: dict[Any, Restore] = {}
  for s in est.stages:
    if s.kind == "train":
      tc = pcfg.backward if s.stage == "backward" and not pcfg.ablation.joint else pcfg.train
      key = ("train", tc.mesh)
      if key not in rows:
        mesh = make_mesh(tc.mesh, target.devices, all_devices=target.devices)
        parts = prog.restore_estimate(loop.training_model_config(serve_cfg, tc), serve_cfg.param_dtype, mesh,
                                      with_overrides(TRAIN_RULES, tc.mesh), train=True)
        rows[key] = Restore("", "train", prog.target_size(mesh), parts, True)
    else:
      key = ("serve",)
      if key not in rows:
        parts = prog.restore_estimate(serve_cfg, serve_cfg.param_dtype, serve.mesh,
                                      with_overrides(SERVE_RULES, pcfg.mesh), train=False)
        rows[key] = Restore("", "serve", prog.target_size(serve.mesh), parts, True)
    name = s.stage.split(" ")[0]
    if name not in rows[key].stage.split(", "):
      rows[key].stage = ", ".join(filter(None, [rows[key].stage, name]))
  for r in rows.values():
    r.fits = target.hbm_bytes is None or r.bytes["total"] <= target.hbm_bytes
  return list(rows.values())


# ------------------------------------------------------------------------------------------------ compile
def compile_one(p: prog.Program, target, outputs: dict) -> Measured:
  """Lowers and compiles one program for the target; its abstract output is kept in `outputs` when later
  programs read it (p.produces)."""
  m = Measured(p.stage, p.name, prog.target_size(p.mesh), p.shape, p.estimate, p.estimate_flops,
               notes=list(p.notes))
  fn, args, kwargs = p.build(outputs)
  t0 = time.perf_counter()
  with jax.set_mesh(p.mesh):
    lowered = fn.lower(*args, **kwargs)
    try:
      compiled = lowered.compile()
    except Exception as e:  # the TPU compiler's refusal of a program that does not fit names the bytes
      found = topology.parse_oom(str(e))
      if found is None:
        raise RuntimeError(f"preflight: {p.stage} {p.name} ({p.shape}) did not compile: {e}") from e
      m.compile_s = time.perf_counter() - t0
      m.needed_bytes, m.fits = found[0], False
      m.notes.append(f"the TPU compiler refused it: {found[0] / 2**30:.2f} GiB needed, "
                     f"{found[1] / 2**30:.2f} GiB available")
      if p.produces:
        outputs[p.produces] = lowered.out_info
      return m
  m.compile_s = time.perf_counter() - t0
  if p.produces:
    outputs[p.produces] = jax.tree.map(lambda o, s: jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=s),
                                       lowered.out_info, compiled.output_shardings)
  mem = compiled.memory_analysis()
  m.hbm = {"arguments": float(mem.argument_size_in_bytes), "outputs": float(mem.output_size_in_bytes),
           "aliased": float(mem.alias_size_in_bytes), "temporaries": float(mem.temp_size_in_bytes),
           "code": float(mem.generated_code_size_in_bytes)}
  m.hbm["total"] = (m.hbm["arguments"] + m.hbm["outputs"] - m.hbm["aliased"] + m.hbm["temporaries"]
                    + m.hbm["code"])
  m.groups = argument_groups(p, args, compiled)
  entry = compiled.cost_analysis()
  entry = entry[0] if isinstance(entry, (list, tuple)) else entry
  text = compiled.as_text()
  cost = hlo_cost.program_cost(text, entry)
  m.flops, m.bytes_accessed, m.xla_flops = cost.flops, cost.bytes_accessed, cost.xla_flops
  if cost.kernels:
    m.notes.append(f"{cost.kernels} Pallas kernel call(s) carry no cost in XLA's analysis: not counted")
  trips = collections.Counter(l.trips for l in cost.loops if l.trips is not None)
  if trips:
    m.notes.append("loop bodies counted by their trip counts: " + ", ".join(
        f"{n} loop{'s' if n > 1 else ''} x{t}" for t, n in sorted(trips.items(), key=lambda x: -x[0])))
  est_temp = p.estimate.get("temporaries", 0.0)
  if abs(m.hbm["temporaries"] - est_temp) > 0.15 * max(m.hbm["temporaries"], est_temp) and \
      m.hbm["temporaries"] > 2**20:
    writes = hlo_cost.largest_writes(text)
    m.notes.append(f"temporaries {m.hbm['temporaries'] / 1e9:.2f} GB, estimate {est_temp / 1e9:.2f} GB; the largest "
                   "arrays it writes: " + "; ".join(f"{what} {b / 1e9:.2f} GB" for b, what in writes))
  if target.hbm_bytes is not None:
    m.fits = m.hbm["total"] <= target.hbm_bytes
  return m


def argument_groups(p: prog.Program, args: tuple, compiled) -> dict[str, dict[str, float]]:
  """Per argument group: bytes per device as compiled (shard shapes padded to the compiled layouts' tiles)
  and unpadded."""
  formats = compiled.input_formats[0]
  dynamic = [(g, a) for g, a in zip(p.groups, args) if g != "static"]
  out: dict[str, dict[str, float]] = {}
  for (group, arg), fmt in zip(dynamic, formats):
    if arg is None:
      continue
    for leaf, f in zip(jax.tree.leaves(arg), jax.tree.leaves(fmt)):
      if f.sharding is None:  # an input the program does not read (jit prunes it): not among its arguments
        continue
      shard = f.sharding.shard_shape(leaf.shape)
      item = jnp.dtype(leaf.dtype).itemsize
      g = out.setdefault(group, {"compiled": 0.0, "unpadded": 0.0})
      g["compiled"] += padded_elements(shard, f.layout) * item
      g["unpadded"] += math.prod(shard) * item
  return out


def padded_elements(shape: Sequence[int], layout) -> int:
  """Elements a shard occupies under its layout: the minor dimensions rounded up to the layout's first tile
  (TPU T(8,128): the last two dims to multiples of 8 and 128; a scalar fills a T(128) tile)."""
  tiling = getattr(layout, "tiling", None) or ()
  if not tiling:
    return math.prod(shape)
  order = getattr(layout, "major_to_minor", None) or tuple(range(len(shape)))
  dims = [shape[i] for i in order]
  tile = tiling[0]
  dims = [1] * max(0, len(tile) - len(dims)) + dims
  for k, t in enumerate(tile):
    i = len(dims) - len(tile) + k
    dims[i] = -(-dims[i] // t) * t
  return math.prod(dims)

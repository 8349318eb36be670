"""Hours per stage of a Humpback run at the paper's sizes: `estimate(pcfg, model, hardware, chips)` walks the
stages of `hb_jax.pipeline.runner.plan` (same names) and turns each into FLOPs, bytes moved, chip- and
wall-hours, and memory per device.

  training   model FLOPs from hb_jax.train.metrics.train_flops (6 x parameters without the input embedding
             per token + causal attention per attended pair), for the paper's steps x 32 examples x the
             assumed mean example length; time = FLOPs / (chips x peak x MFU), where the rows the loader pads
             in (the paper's batch spread over more batch shards than it fills) are charged too.
  generation the decode roofline of *this* sampler (cost.decode_step): each step of a replica reads its
             weights and the whole allocated KV cache, and computes 2 x parameters + attention over every
             slot per row; step time = max(bytes / HBM bandwidth, FLOPs / peak), divided by the decode
             efficiency. Prompts are prefilled as compute (cost.prefill: padded to their length bucket,
             attending to every slot), at the MFU. The curation rubric every rating prompt starts with is a
             shared prefix (hb_jax.sample.prefix): prefilled once, read once per decode step, attended by
             every row.
  scoring    `digits` and `likelihood` curation: one forward pass per candidate (cost.forward), as compute
             (`digits` after the shared rubric prefix too).
Every number the model does not know is an `Assumptions` field, printed with the estimate.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from hb_jax.config import ConfigError, ModelConfig, SampleConfig, TrainConfig
from hb_jax.estimate import cost
from hb_jax.estimate.assumptions import PAPER_A4, PAPER_A5, Assumptions, Lengths
from hb_jax.estimate.hardware import GB, Hardware
from hb_jax.estimate.memory import kv_bytes_per_token, serve_memory, train_memory
from hb_jax.sample.prefix import PREFIX_ALIGN
from hb_jax.train import metrics


@dataclasses.dataclass
class StageEstimate:
  stage: str  # the pipeline's stage name (sub-rows: 'curate_1 digits')
  kind: str  # train | generate | score
  work: str  # what it processes, in words
  flops: float
  bytes: float
  chip_hours: float  # at the assumed efficiencies
  wall_hours: float
  roofline_chip_hours: float  # at 100% of peak / bandwidth (and every decode slot busy)
  chips: int
  bound: str = ""  # generate: memory | compute (per decode step)
  decode_roofline_chip_hours: float = 0.0  # generate: the decode part of roofline_chip_hours (prefill is the rest)
  memory_per_device: float = 0.0  # bytes at the config's batch
  memory_fits: bool = True
  memory_breakdown: dict[str, Any] = dataclasses.field(default_factory=dict)  # train_memory / serve_memory
  notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Estimate:
  config: str
  model: str
  hardware: Hardware
  chips: int
  params: int
  params_no_embedding: int
  stages: list[StageEstimate]
  assumptions: Assumptions
  derived: dict[str, float]
  warnings: list[str]

  def total(self, key: str, kinds: Sequence[str] = ("train", "generate", "score")) -> float:
    return sum(getattr(s, key) for s in self.stages if s.kind in kinds)

  def to_dict(self) -> dict[str, Any]:
    return {"config": self.config, "model": self.model, "hardware": dataclasses.asdict(self.hardware),
            "chips": self.chips, "params": self.params, "params_no_embedding": self.params_no_embedding,
            "stages": [dataclasses.asdict(s) for s in self.stages],
            "totals": {k: self.total(k) for k in ("flops", "bytes", "chip_hours", "wall_hours",
                                                  "roofline_chip_hours")},
            "generation_and_curation": {k: self.total(k, ("generate", "score")) for k in
                                        ("chip_hours", "wall_hours", "roofline_chip_hours")},
            "assumptions": dataclasses.asdict(self.assumptions), "derived": self.derived,
            "warnings": self.warnings}


def _bucket(n: float, buckets: Sequence[int]) -> int:
  from hb_jax.sample.plan import bucket_length
  return bucket_length(int(math.ceil(n)), buckets)


def _prefix_slots(prefix_tokens: float) -> int:
  """Cache slots of a shared prefix: hb_jax.sample.prefix pads it to a multiple of PREFIX_ALIGN."""
  return -(-int(math.ceil(prefix_tokens)) // PREFIX_ALIGN) * PREFIX_ALIGN


class _Estimator:
  def __init__(self, pcfg, model: ModelConfig, hw: Hardware, chips: int, a: Assumptions):
    self.p, self.m, self.hw, self.chips, self.a = pcfg, model, hw, chips, a
    self.len = Lengths(a, pcfg.ablation.tags)
    self.buckets = pcfg.length_buckets  # the run's prompt buckets: slots are what its stages allocate
    self.local = min(chips, hw.chips_per_host)
    self.processes = max(1, chips // hw.chips_per_host)
    self.warnings: list[str] = []
    self.derived: dict[str, float] = {
        "forward_template_tokens": self.len.forward_template,
        "backward_template_tokens": self.len.backward_template,
        "curation_template_tokens": self.len.curation_template,
        "curation_shared_prefix_tokens": self.len.curation_prefix,
        "seed_forward_example_tokens": self.len.seed_forward,
        "seed_backward_example_tokens": self.len.seed_backward,
        "augmented_example_tokens": self.len.augmented_forward,
        "kv_bytes_per_token": kv_bytes_per_token(model, a.kv_bytes),
    }

  # ---------------------------------------------------------------------------------------- training
  def train(self, stage: str, tc: TrainConfig, n_seed: int, n_aug: int, seed_len: float,
            aug_len: float = 0.0) -> StageEstimate:
    a, m, hw = self.a, self.m, self.hw
    n = n_seed + n_aug
    steps, batch = tc.steps_for(n), tc.examples_per_step(n)
    mean_len = min(tc.seq_len, (n_seed * seed_len + n_aug * aug_len) / max(n, 1))
    examples = steps * batch
    tokens = examples * mean_len
    pairs = examples * mean_len * (mean_len + 1) / 2  # per example: positions restart, no cross-example keys
    flops = metrics.train_flops(m, tokens, pairs)  # the stage's: linear in tokens and pairs
    try:
      data, fsdp, tensor = tc.mesh.resolve(self.chips)
    except ConfigError as e:
      raise ConfigError(f"{stage}: train mesh on {self.chips} chips: {e}") from e
    ways = data * fsdp
    notes = []
    if batch % (self.processes * tc.micro_batches):
      self.warnings.append(f"{stage}: batch {batch} is not divisible by {self.processes} processes x "
                           f"{tc.micro_batches} micro-batches; hb_jax.data.loader.plan_batches will refuse it")
    micro_tokens = batch / tc.micro_batches * mean_len
    rows_needed = max(1, math.ceil(micro_tokens * a.worst_step_factor / (tc.seq_len * a.packing_efficiency)))
    multiple = math.lcm(ways, self.processes)
    rows = -(-rows_needed // multiple) * multiple
    useful = micro_tokens / (rows * tc.seq_len)
    if useful < 0.5:
      notes.append(f"{rows} rows per micro-batch for ~{micro_tokens:,.0f} tokens: {useful:.0%} of row slots "
                   f"hold tokens (the batch spreads over {ways} batch shards)")
    executed = flops / useful
    chip_s = executed / (hw.peak_flops * a.mfu)
    roof_s = flops / hw.peak_flops
    bytes_ = steps * cost.train_step_bytes(m, micro_batches=tc.micro_batches, chips=self.chips, tensor=tensor)
    mem = train_memory(m, fsdp=fsdp, tensor=tensor, rows_per_device=max(1, rows // ways), seq_len=tc.seq_len,
                       micro_batches=tc.micro_batches, remat=tc.remat or "full")
    fits = mem["total"] <= hw.memory * a.memory_headroom
    if not fits:
      self.warnings.append(f"{stage}: training needs {mem['total'] / GB:.1f} GB per device, more than "
                           f"{a.memory_headroom:.0%} of {hw.memory / GB:.1f} GB ({hw.name})")
    return StageEstimate(stage, "train", f"{steps} steps x {batch} examples x {mean_len:.0f} tokens "
                         f"({n:,} examples; mesh {data}x{fsdp}x{tensor}, {tc.micro_batches} micro)",
                         flops, bytes_, chip_s / 3600, chip_s / 3600 / self.chips, roof_s / 3600,
                         self.chips, memory_per_device=mem["total"], memory_fits=fits, notes=notes,
                         memory_breakdown={**mem, "rows_per_device": max(1, rows // ways),
                                           "mesh": f"{data}x{fsdp}x{tensor}"})

  # ---------------------------------------------------------------------------------------- generation
  def replica(self) -> tuple[int, int]:
    """(chips per inference replica, replicas per process) from config.mesh over one host's devices.

    SERVE_RULES never shard 'embed', so fsdp acts as one more batch axis: a replica is `tensor` chips."""
    try:
      data, fsdp, tensor = self.p.mesh.resolve(self.local)
    except ConfigError as e:
      raise ConfigError(f"config.mesh over {self.local} local devices ({self.hw.name}): {e}") from e
    return tensor, data * fsdp

  def generate(self, stage: str, n: float, prompt: float, prompt_max: float, new: float, max_new: int,
               batch_per_process: int, prefix: float = 0.0) -> StageEstimate:
    """`prompt`/`prompt_max`: each row's own prompt tokens (mean, largest); `prefix`: tokens every prompt
    shares, prefilled once into a batch-1 cache that each step reads once and every row attends to."""
    a, m, hw = self.a, self.m, self.hw
    rc, per_process = self.replica()
    batch = max(1.0, batch_per_process / per_process)
    replicas = max(1, self.chips // rc)
    prefix_slots = _prefix_slots(prefix)
    slots = prompt * a.bucket_factor + max_new
    slots_max = _bucket(prompt_max, self.buckets) + max_new
    step = cost.decode_step(m, rows=batch, slots=slots, prefix_slots=prefix_slots, weight_bytes=a.weight_bytes,
                            kv_bytes=a.kv_bytes)
    step_bytes, step_flops = step.bytes, step.flops
    t_mem, t_flop = step_bytes / (rc * hw.hbm_bandwidth), step_flops / (rc * hw.peak_flops)
    t_step = max(t_mem, t_flop)
    tokens = n * new
    steps = tokens / (batch * a.slot_utilisation)
    decode_chip_s = steps * t_step / a.decode_efficiency * rc
    decode_roof_s = tokens / batch * t_step * rc
    # Prefill: every prompt padded to its bucket, attending to the prefix and every slot of its fresh row cache
    # (the kernel masks, it doesn't skip). The prefix's own prefill, once per call of a chunk, is left out.
    prefill = cost.prefill(m, rows=n, prompt_len=prompt * a.bucket_factor, slots=slots, prefix_slots=prefix_slots,
                           weight_bytes=a.weight_bytes)
    prefill_flops = prefill.flops
    refill_rows = max(1.0, batch / 8)  # SampleConfig.refill_min: a refill waits for max_batch // 8 free rows
    prefill_bytes = n / refill_rows * prefill.bytes  # each refill reads the weights once
    prefill_chip_s = prefill_flops / (hw.peak_flops * a.mfu)
    mem = serve_memory(m, tensor=rc, batch=int(batch), slots=slots_max, prompt_bucket=slots_max - max_new,
                       prefix_slots=prefix_slots, weight_bytes=a.weight_bytes, kv_bytes=a.kv_bytes)
    fits = mem["total"] <= hw.memory * a.memory_headroom
    if not fits:
      self.warnings.append(f"{stage}: a replica of {rc} x {hw.name} needs {mem['total'] / GB:.1f} GB per device "
                           f"(weights {mem['weights'] / GB:.1f} + KV {mem['kv_cache'] / GB:.1f} for {int(batch)} "
                           f"rows x {slots_max} slots), more than {a.memory_headroom:.0%} of "
                           f"{hw.memory / GB:.1f} GB")
    chip_s = decode_chip_s + prefill_chip_s
    est = StageEstimate(
        stage, "generate", f"{n:,.0f} prompts x ~{prompt:.0f} tokens"
        + (f" after a shared {prefix:.0f}-token prefix" if prefix_slots else "")
        + f" -> ~{new:.0f} new (max {max_new}); {replicas} replicas of {rc} chips, {batch:.0f} rows each",
        steps * step_flops + prefill_flops, steps * step_bytes + prefill_bytes, chip_s / 3600,
        chip_s / 3600 / (replicas * rc), (decode_roof_s + prefill_flops / hw.peak_flops) / 3600, replicas * rc,
        bound="memory" if t_mem >= t_flop else "compute", decode_roofline_chip_hours=decode_roof_s / 3600,
        memory_per_device=mem["total"], memory_fits=fits,
        memory_breakdown={**mem, "rows_per_replica": int(batch), "slots": slots_max, "replica_chips": rc,
                          "prefix_slots": prefix_slots})
    est.notes.append(f"decode step {t_step * 1e3:.1f} ms roofline ({t_mem * 1e3:.1f} ms bytes, "
                     f"{t_flop * 1e3:.1f} ms FLOPs) for {batch:.0f} rows x {slots:.0f} slots"
                     + (f" + {prefix_slots} shared" if prefix_slots else "") + "; prefill "
                     f"{prefill_chip_s / max(chip_s, 1e-9):.0%} of the time")
    return est

  def score(self, stage: str, n: float, length: float, batch: int, prefix: float = 0.0) -> StageEstimate:
    """One forward pass over each sequence's own `length` tokens, attending to a shared `prefix` as well."""
    a, m, hw = self.a, self.m, self.hw
    rc, _ = self.replica()
    padded = length * a.bucket_factor
    prefix_slots = _prefix_slots(prefix)
    passes = cost.forward(m, rows=n, length=padded, keys=prefix_slots + padded, weight_bytes=a.weight_bytes)
    flops = passes.flops
    bytes_ = n / max(batch, 1) * passes.bytes  # each batch reads the weights once
    chip_s = max(flops / (hw.peak_flops * a.mfu), bytes_ / hw.hbm_bandwidth)
    chips = max(1, self.chips // rc) * rc
    return StageEstimate(stage, "score", f"{n:,.0f} sequences x ~{length:.0f} tokens (one forward pass"
                         + (f", after a shared {prefix:.0f}-token prefix)" if prefix_slots else ")"),
                         flops, bytes_, chip_s / 3600, chip_s / 3600 / chips,
                         max(flops / hw.peak_flops, bytes_ / hw.hbm_bandwidth) / 3600, chips)


def estimate(pcfg, model: ModelConfig, hw: Hardware, chips: int, a: Assumptions = Assumptions(),
             config_name: str = "", model_name: str = "") -> Estimate:
  """Per-stage estimate of the run `pcfg` (a PipelineConfig) with `model` on `chips` x `hw`."""
  if chips <= 0:
    raise ConfigError(f"--chips must be positive, found {chips}")
  e = _Estimator(pcfg, model, hw, chips, a)
  L = e.len
  seed = a.seed_examples
  candidates = a.segments * a.candidates_per_segment
  k = pcfg.curate.k
  curated = a.curated_examples or (PAPER_A5 if k >= 5 else PAPER_A4 if k >= 4 else int(candidates))
  curation = pcfg.ablation.curation
  iters = pcfg.curate.iterations if curation else 1
  out: list[StageEstimate] = []
  if pcfg.ablation.joint:
    out.append(e.train("backward", pcfg.train, 2 * seed, 0, (L.seed_forward + L.seed_backward) / 2))
  else:
    out.append(e.train("backward", pcfg.backward, seed, 0, L.seed_backward))
  aug = pcfg.augment
  out.append(e.generate("augment", a.segments, L.augment_prompt, L.augment_prompt_max,
                        min(a.generated_instruction_tokens, aug.sampling.max_new_tokens), aug.sampling.max_new_tokens,
                        aug.batch))
  if not pcfg.ablation.joint:
    out.append(e.train("seed", pcfg.train, seed, 0, L.seed_forward))
  c = pcfg.curate
  for t in range(1, iters + 1):
    if curation:
      methods = [c.method] + [x for x in c.compare if x != c.method]
      for method in methods:
        name = f"curate_{t}" + ("" if method == c.method else f" {method}")
        n = candidates if (method == c.method or method != "generate" or not c.generate_sample) \
            else min(candidates, c.generate_sample)
        if method == "generate":
          rated = min(a.rating_tokens, c.sampling.max_new_tokens)
          out.append(e.generate(name, n, L.curation_suffix, L.curation_suffix_max, rated,
                                c.sampling.max_new_tokens, c.batch, prefix=L.curation_prefix))
          if c.fallback:  # the ratings without a score line: one forward after their reasoning + "Score:"
            out.append(e.score(f"curate_{t} fallback", n * a.unparsed_ratings, L.curation_suffix + rated + 3,
                               SampleConfig().score_batch, prefix=L.curation_prefix))
        elif method == "digits":
          out.append(e.score(name, n, L.curation_suffix + 3, SampleConfig().score_batch, prefix=L.curation_prefix))
        else:
          out.append(e.score(name, n, L.likelihood_sequence, SampleConfig().score_batch))
      out.append(e.train(f"train_{t}", pcfg.train, seed, curated, L.seed_forward, L.augmented_forward))
    else:
      out.append(e.train(f"train_{t}", pcfg.train, seed, int(candidates), L.seed_forward, L.augmented_forward))
  if pcfg.ablation.baselines and curation:
    out.append(e.train("no_curation", pcfg.train, seed, int(candidates), L.seed_forward, L.augmented_forward))
  models = 1 + iters + (1 if pcfg.ablation.baselines and curation else 0)
  n_eval = (pcfg.evaluate.max_items or a.eval_items) * models
  ev = pcfg.evaluate
  out.append(e.generate("evaluate", n_eval, L.eval_prompt, L.eval_prompt_max,
                        min(a.eval_output_tokens, ev.sampling.max_new_tokens), ev.sampling.max_new_tokens,
                        ev.batch))
  out[-1].work = f"{models} models x {n_eval // models:,} items: " + out[-1].work
  e.derived["curated_examples_per_iteration"] = curated
  e.derived["candidates"] = candidates
  return Estimate(config_name or pcfg.name, model_name, hw, chips, model.num_params, model.num_params_no_embedding,
                  out, a, e.derived, e.warnings)

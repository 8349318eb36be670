"""Cost model of a Humpback run at the paper's sizes: FLOPs, bytes moved and hours per stage.

    python tools/estimate.py --config=configs/llama65b.py --hardware tpu-v5p [--chips 32] [--json]

What is counted, per stage of `hb_jax.pipeline.runner.plan` (same names):
  training   model FLOPs from hb_jax.train.metrics.train_flops (6 x parameters without the input embedding
             per token + causal attention per attended pair), for the paper's steps x 32 examples x the
             assumed mean example length; time = FLOPs / (chips x peak x MFU), where the rows the loader pads
             in (the paper's batch spread over more batch shards than it fills) are charged too.
  generation the decode roofline of *this* sampler: each step of a replica reads its weights and the whole
             allocated KV cache (the attention reads every slot, masked), and computes 2 x parameters +
             attention over every slot per row; step time = max(bytes / HBM bandwidth, FLOPs / peak),
             divided by the decode efficiency. Prompts are prefilled as compute (padded to their length
             bucket, attending to every slot), at the MFU. The curation rubric every rating prompt starts
             with is a shared prefix (hb_jax.sample.prefix): prefilled once, read once per decode step,
             attended by every row.
  scoring    `digits` and `likelihood` curation: one forward pass per candidate, as compute (`digits`
             after the shared rubric prefix too).
Bytes moved: HBM traffic of weights, KV cache and optimizer state (activations are not counted).
Every number the model does not know is an `Assumptions` field, printed with the estimate.

Memory arithmetic for the launch configs (configs/llama*.py) lives here too: `train_memory` (fp32 master
params, AdamW moments, gradients, bf16 compute copies, activations under remat, per device) and
`serve_memory` (bf16 weights per tensor shard, the KV cache of one inference batch, the second copy the
first refill holds, and that refill's prefill working set).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
from typing import Any, Iterable, Mapping, Sequence

from hb_jax.config import ConfigError, ModelConfig, SampleConfig, TrainConfig
from hb_jax.sample.prefix import PREFIX_ALIGN
from hb_jax.train import metrics

GB = 1e9


# ------------------------------------------------------------------------------------------------ hardware
@dataclasses.dataclass(frozen=True)
class Hardware:
  """One accelerator chip, from its vendor's data sheet (dense bf16, no sparsity)."""
  name: str
  description: str
  peak_flops: float  # bf16 FLOP/s per chip
  hbm_bandwidth: float  # bytes/s per chip
  memory: float  # bytes of HBM per chip
  chips_per_host: int  # devices one process drives (one process per host)
  source: str


HARDWARE: dict[str, Hardware] = {h.name: h for h in (
    Hardware("h100", "NVIDIA H100 SXM5 80GB", 989e12, 3.35e12, 80e9, 8,
             "NVIDIA H100 data sheet: 989 TFLOPS bf16 dense (1,979 with sparsity), 3.35 TB/s HBM3, 80 GB"),
    Hardware("h200", "NVIDIA H200 SXM 141GB", 989e12, 4.8e12, 141e9, 8,
             "NVIDIA H200 data sheet: 989 TFLOPS bf16 dense, 4.8 TB/s HBM3e, 141 GB"),
    Hardware("a100", "NVIDIA A100 SXM 80GB", 312e12, 2.039e12, 80e9, 8,
             "NVIDIA A100 data sheet: 312 TFLOPS bf16 dense, 2,039 GB/s HBM2e, 80 GB"),
    Hardware("tpu-v4", "Google Cloud TPU v4", 275e12, 1.2e12, 32 * 2**30, 4,
             "Cloud TPU v4 docs: 275 TFLOPS bf16 per chip, HBM2 32 GiB at 1,200 GB/s, 4 chips per host"),
    Hardware("tpu-v5e", "Google Cloud TPU v5e", 197e12, 819e9, 16e9, 8,
             "Cloud TPU v5e docs: 197 TFLOPS bf16 per chip, HBM2 16 GB at 819 GB/s, 8 chips per host"),
    Hardware("tpu-v5p", "Google Cloud TPU v5p", 459e12, 2.765e12, 95e9, 4,
             "Cloud TPU v5p docs: 459 TFLOPS bf16 per chip, HBM2e 95 GB at 2,765 GB/s, 4 chips per host"),
)}


def hardware(name: str) -> Hardware:
  if name not in HARDWARE:
    raise ConfigError(f"--hardware={name!r}: expected one of {sorted(HARDWARE)}")
  return HARDWARE[name]


# --------------------------------------------------------------------------------------------- assumptions
@dataclasses.dataclass(frozen=True)
class Assumptions:
  """What the paper does not say (and efficiencies); each is printed, each can be overridden."""
  # Data sizes: the paper's.
  seed_examples: int = 3200
  segments: int = 502_133
  candidates_per_segment: float = 1.0  # one sampled instruction per segment (empty ones are dropped: rare)
  curated_examples: int = 0  # 0: the paper's A5^(2) 41,821 for k >= 5, A4^(2) 195,043 for k >= 4 (per iteration)
  eval_items: int = 805  # AlpacaEval instructions (the paper configs leave inputs.heldout_jsonl to you)
  # Lengths, in tokens of the LLaMA sentencepiece vocabulary.
  chars_per_token: float = 4.0  # English web text; prompt templates are converted with it
  segment_tokens: float = 350.0  # mean segment: 600-3,000 characters kept, ~1,400 on average
  segment_max_tokens: int = 750  # 3,000 characters: sizes the largest length bucket of a batch
  seed_instruction_tokens: float = 50.0  # oasst1 first-turn prompts
  seed_output_tokens: float = 280.0  # oasst1 rank-0 replies
  generated_instruction_tokens: float = 40.0  # what M_yx writes per segment (EOS-terminated)
  rating_tokens: float = 100.0  # brief reasoning + "Score: k" (curation max_new_tokens caps it)
  eval_instruction_tokens: float = 40.0
  eval_output_tokens: float = 300.0  # greedy answers (evaluate max_new_tokens caps it)
  eval_instruction_max_tokens: int = 480  # sizes the largest length bucket of an evaluation batch
  bucket_factor: float = 1.0 / math.log(2)  # power-of-two buckets: padded length ~1.44x the prompt on average
  worst_step_factor: float = 1.25  # the loader sizes rows for the most tokens any step of the run draws
  # Efficiencies.
  mfu: float = 0.4  # training and prefill: model FLOPs / peak on the rows that run
  decode_efficiency: float = 0.5  # achieved fraction of the decode roofline (kernels, sampling, host work)
  slot_utilisation: float = 0.9  # busy decode rows (bench/run.py sample measured 90% on mixed lengths)
  packing_efficiency: float = 0.9  # real tokens / row slots when packing examples into seq_len rows
  weight_bytes: float = 2.0  # bf16 model folders (convert with --param_dtype bfloat16; fp32 doubles traffic)
  kv_bytes: float = 2.0  # the cache is in the compute dtype (bf16 on accelerators)
  memory_headroom: float = 0.9  # usable share of HBM (XLA workspace, fragmentation)

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if v < 0:
        raise ConfigError(f"assumption {f.name} must be >= 0, found {v}")
    for key in ("mfu", "decode_efficiency", "slot_utilisation", "packing_efficiency", "memory_headroom"):
      if not 0 < getattr(self, key) <= 1:
        raise ConfigError(f"assumption {key} must be in (0, 1], found {getattr(self, key)}")

  def with_overrides(self, pairs: Iterable[str]) -> "Assumptions":
    """`name=value` strings (the CLI's --assume) -> a new Assumptions; unknown names are errors."""
    fields = {f.name: f for f in dataclasses.fields(self)}
    updates: dict[str, Any] = {}
    for pair in pairs:
      name, sep, value = pair.partition("=")
      if not sep or name not in fields:
        raise ConfigError(f"--assume {pair!r}: expected NAME=VALUE with NAME in {sorted(fields)}")
      kind = type(getattr(self, name))
      try:
        updates[name] = kind(float(value)) if kind is int else kind(value)
      except ValueError as e:
        raise ConfigError(f"--assume {pair!r}: {e}") from e
    return dataclasses.replace(self, **updates)


PAPER_A5, PAPER_A4 = 41_821, 195_043


# -------------------------------------------------------------------------------------------- model helpers
def per_layer_params(cfg: ModelConfig) -> int:
  d, f, h, k, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  return d * h * hd * 2 + d * k * hd * 2 + 3 * d * f + 2 * d


def kv_bytes_per_token(cfg: ModelConfig, dtype_bytes: float = 2.0) -> float:
  """K and V of one token, all layers."""
  return 2.0 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * dtype_bytes


def attention_flops_per_key(cfg: ModelConfig) -> float:
  """Forward FLOPs of one (query, key) pair, all layers: QK^T and PV, 2 x head_dim each, per head."""
  return 4.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim


def kv_split(cfg: ModelConfig, tensor: int) -> int:
  """How many ways the KV heads split over `tensor` (parallel.py replicates them when it doesn't divide)."""
  return tensor if cfg.num_kv_heads % tensor == 0 else 1


# ---------------------------------------------------------------------------------------------- memory
def train_memory(cfg: ModelConfig, *, fsdp: int, tensor: int, rows_per_device: int, seq_len: int,
                 micro_batches: int, remat: str = "full") -> dict[str, float]:
  """Bytes per device of one training step under TRAIN_RULES (params sharded over fsdp x tensor).

  fp32 master params, AdamW mu and nu (fp32), fp32 gradients (+ the fp32 accumulator with micro-batches);
  bf16 compute copies: a layer's weights all-gathered over fsdp (this layer and the next in flight) and its
  fp32 gradient before the reduce-scatter; activations: the layer inputs kept for the backward pass under
  remat, one layer's recomputed working set (fp32 attention scores, probs and their gradient; MLP and
  projections) and the fp32 logits with their gradient.
  """
  n, shards = cfg.num_params, fsdp * tensor
  r, t, d, L = rows_per_device, seq_len, cfg.hidden_size, cfg.num_layers
  heads, f, v = cfg.num_heads / tensor, cfg.intermediate_size / tensor, cfg.vocab_size / tensor
  layer = per_layer_params(cfg) / tensor
  head = cfg.vocab_size * d / tensor
  out = {
      "params_fp32": 4.0 * n / shards,
      "adamw_fp32": 8.0 * n / shards,
      "grads_fp32": 4.0 * n / shards * (2 if micro_batches > 1 else 1),
      "compute_copies": (2 * 2.0 + 4.0) * layer + (2.0 + 4.0) * head,
      "saved_activations": r * t * d * 2.0 * L,
      "layer_working_set": r * (heads * t * t * (4 + 2 + 4) + t * f * 2.0 * 6 + t * d * 2.0 * 8),
      "logits": r * t * v * (4 + 4 + 2),
  }
  if remat in ("dots", "none"):  # matmul outputs kept per layer as well
    out["saved_activations"] += r * t * (4 * d / tensor + 3 * f) * 2.0 * L
  if remat == "none":
    out["saved_activations"] += r * heads * t * t * 2.0 * L
  out["total"] = sum(out.values())
  return out


def serve_memory(cfg: ModelConfig, *, tensor: int, batch: int, slots: int, prompt_bucket: int,
                 prefix_slots: int = 0, weight_bytes: float = 2.0, kv_bytes: float = 2.0) -> dict[str, float]:
  """Bytes per device of one inference replica (SERVE_RULES: weights split over `tensor` only) decoding
  `batch` rows of `slots` cache slots each (plus one batch-1 shared prefix of `prefix_slots`), at its worst
  moment: the first refill, which prefills all `batch` prompts (padded to `prompt_bucket`) into a fresh cache
  of their own before scattering it into the batch's (hb_jax/sample/sampler.py `_refill_impl`), with one
  layer's fp32 attention scores over the prefix and every slot."""
  heads, f = cfg.num_heads / tensor, cfg.intermediate_size / tensor
  per_slot = kv_bytes_per_token(cfg, kv_bytes) / kv_split(cfg, tensor)
  kv = batch * slots * per_slot
  out = {
      "weights": cfg.num_params * weight_bytes / tensor,
      "kv_cache": kv,
      "refill_cache": kv,
      "prefix_cache": prefix_slots * per_slot,
      "prefill_layer": batch * prompt_bucket * (heads * (prefix_slots + slots) * (4 + 2) + f * 2.0 * 3
                                                + cfg.hidden_size * 2.0 * 4),
      "logits_and_state": batch * cfg.vocab_size * 4.0 * 2 / tensor + batch * slots * 8.0,
  }
  out["total"] = sum(out.values())
  return out


def max_serving_batch(cfg: ModelConfig, hw: Hardware, *, tensor: int, slots: int, prompt_bucket: int,
                      prefix_slots: int = 0, headroom: float = 0.9, weight_bytes: float = 2.0,
                      limit: int = 4096) -> int:
  """The largest power-of-two rows per replica whose `serve_memory` fits in `headroom` of a chip (0: none)."""
  best, b = 0, 1
  while b <= limit:
    need = serve_memory(cfg, tensor=tensor, batch=b, slots=slots, prompt_bucket=prompt_bucket,
                        prefix_slots=prefix_slots, weight_bytes=weight_bytes)["total"]
    if need > hw.memory * headroom:
      break
    best, b = b, b * 2
  return best


@functools.lru_cache(maxsize=16)
def _param_axes(cfg: ModelConfig) -> tuple[tuple[str, tuple, tuple[int, ...]], ...]:
  """(name, logical axes, shape) of every parameter, from an abstract model (no memory allocated)."""
  from flax import nnx  # local: the cost model itself needs no model

  from hb_jax.model.llama import abstract_params

  state = abstract_params(cfg)
  return tuple((".".join(map(str, path)), tuple(var.get_metadata().get("logical_axes") or ()), tuple(var.shape))
               for path, var in nnx.to_flat_state(state))


def undivided_params(cfg: ModelConfig, mesh_shape: Mapping[str, int], rules) -> list[str]:
  """Parameters whose dimension a mesh axis of `rules` would shard but cannot divide (so parallel.py
  replicates it there instead): '<name> dim <i> (<size>) not divisible by <axis>=<n>'."""
  from hb_jax.parallel import logical_to_spec

  problems = []
  rules_map = dict(rules)
  for name, axes, shape in _param_axes(cfg):
    spec = tuple(logical_to_spec(axes, shape, rules, mesh_shape)) + (None,) * len(axes)
    for i, logical in enumerate(axes):
      want = rules_map.get(logical) if logical else None
      want = [want] if isinstance(want, str) else list(want or [])
      have = [spec[i]] if isinstance(spec[i], str) else list(spec[i] or [])
      for axis in want:
        if mesh_shape.get(axis, 1) > 1 and axis not in have:
          problems.append(f"{name} dim {i} ({shape[i]}) not divisible by {axis}={mesh_shape[axis]}")
  return problems


# --------------------------------------------------------------------------------------------- estimates
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


def _template_tokens(text: str, a: Assumptions) -> float:
  return len(text) / a.chars_per_token


class _Lengths:
  """Mean token counts of every sequence the pipeline trains on, generates from or scores."""

  def __init__(self, a: Assumptions, tags: bool):
    from hb_jax.data import prompts
    tag = prompts.TAG_SEED if tags else ""
    # +1 BOS, +1 EOS (training targets), the chat wrapper and the tag sentence.
    self.forward_template = _template_tokens(prompts.forward_prompt("", tag) + prompts.forward_target(""), a) + 2
    self.backward_template = _template_tokens(prompts.backward_prompt("") + prompts.backward_target(""), a) + 2
    self.curation_template = _template_tokens(prompts.forward_prompt(prompts.CURATION_PROMPT_HEADER + "\n", tag),
                                              a) + 1
    # The rubric every rating prompt starts with ("[INST] " + the paper's header, after BOS) is prefilled once
    # and shared (hb_jax.sample.prefix); each candidate's own part is the rest of the template + its text.
    head = prompts.forward_prompt(prompts.CURATION_PROMPT_HEADER, "").split(prompts.CURATION_PROMPT_HEADER)[0]
    self.curation_prefix = _template_tokens(head + prompts.CURATION_PROMPT_HEADER, a) + 1
    own = self.curation_template - self.curation_prefix + a.generated_instruction_tokens
    self.curation_suffix = own + a.segment_tokens
    self.curation_suffix_max = own + a.segment_max_tokens
    self.seed_forward = self.forward_template + a.seed_instruction_tokens + a.seed_output_tokens
    self.seed_backward = self.backward_template + a.seed_output_tokens + a.seed_instruction_tokens
    self.augmented_forward = self.forward_template + a.generated_instruction_tokens + a.segment_tokens
    self.augment_prompt = self.backward_template - 1 + a.segment_tokens
    self.augment_prompt_max = self.backward_template - 1 + a.segment_max_tokens
    self.likelihood_sequence = self.augmented_forward
    self.eval_prompt = self.forward_template - 1 + a.eval_instruction_tokens
    self.eval_prompt_max = self.forward_template - 1 + a.eval_instruction_max_tokens


def _bucket(n: float, buckets: Sequence[int]) -> int:
  from hb_jax.sample.plan import bucket_length
  return bucket_length(int(math.ceil(n)), buckets)


class _Estimator:
  def __init__(self, pcfg, model: ModelConfig, hw: Hardware, chips: int, a: Assumptions):
    self.p, self.m, self.hw, self.chips, self.a = pcfg, model, hw, chips, a
    self.n_ne = model.num_params_no_embedding
    self.len = _Lengths(a, pcfg.ablation.tags)
    self.buckets = SampleConfig().length_buckets
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
    flops = metrics.train_flops(m, tokens, pairs)
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
    # HBM traffic: the AdamW update reads params, grads, mu, nu and writes params, mu, nu (fp32, once over
    # all shards); every pass (forward, remat recompute, backward) reads the bf16 gathered weights on each
    # chip (1/tensor of them).
    nb = m.num_params
    bytes_ = steps * (28.0 * nb + tc.micro_batches * 3 * 2.0 * nb * self.chips / tensor)
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
    prefix_slots = -(-int(math.ceil(prefix)) // PREFIX_ALIGN) * PREFIX_ALIGN
    slots = prompt * a.bucket_factor + max_new
    slots_max = _bucket(prompt_max, self.buckets) + max_new
    kv_tok = kv_bytes_per_token(m, a.kv_bytes)
    weight_bytes = self.n_ne * a.weight_bytes
    step_bytes = weight_bytes + (prefix_slots + batch * slots) * kv_tok
    step_flops = batch * (2.0 * self.n_ne + attention_flops_per_key(m) * (prefix_slots + slots))
    t_mem, t_flop = step_bytes / (rc * hw.hbm_bandwidth), step_flops / (rc * hw.peak_flops)
    t_step = max(t_mem, t_flop)
    tokens = n * new
    steps = tokens / (batch * a.slot_utilisation)
    decode_chip_s = steps * t_step / a.decode_efficiency * rc
    decode_roof_s = tokens / batch * t_step * rc
    # Prefill: every prompt padded to its bucket, attending to the prefix and every slot of its fresh row cache
    # (the kernel masks, it doesn't skip). The prefix's own prefill, once per call of a chunk, is left out.
    padded = prompt * a.bucket_factor
    prefill_flops = n * (2.0 * self.n_ne * padded + attention_flops_per_key(m) * padded * (prefix_slots + slots))
    refill_rows = max(1.0, batch / 8)  # SampleConfig.refill_min: a refill waits for max_batch // 8 free rows
    prefill_bytes = n / refill_rows * weight_bytes
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
    prefix_slots = -(-int(math.ceil(prefix)) // PREFIX_ALIGN) * PREFIX_ALIGN
    flops = n * (2.0 * self.n_ne * padded + attention_flops_per_key(m) * padded * (prefix_slots + padded))
    bytes_ = n / max(batch, 1) * self.n_ne * a.weight_bytes
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
                        min(a.generated_instruction_tokens, aug.max_new_tokens), aug.max_new_tokens, aug.batch))
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
          out.append(e.generate(name, n, L.curation_suffix, L.curation_suffix_max,
                                min(a.rating_tokens, c.max_new_tokens), c.max_new_tokens, c.batch,
                                prefix=L.curation_prefix))
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
                        min(a.eval_output_tokens, ev.max_new_tokens), ev.max_new_tokens, ev.batch))
  out[-1].work = f"{models} models x {n_eval // models:,} items: " + out[-1].work
  e.derived["curated_examples_per_iteration"] = curated
  e.derived["candidates"] = candidates
  return Estimate(config_name or pcfg.name, model_name, hw, chips, model.num_params, model.num_params_no_embedding,
                  out, a, e.derived, e.warnings)


# ------------------------------------------------------------------------------------------ config loading
@dataclasses.dataclass
class LoadedConfig:
  pipeline: Any  # PipelineConfig
  model: ModelConfig
  model_name: str
  hardware: str  # the variant's hardware (or the --hardware asked for)
  chips: int  # the variant's reference slice size (0: unknown)
  slice: str
  path: str


def load_config(spec: str, hardware_name: str | None = None, preset_name: str | None = None) -> LoadedConfig:
  """`configs/X.py[:variant]` -> PipelineConfig + the model shape, as launch/run.py would validate it.

  The model comes from `preset_name`, else the config module's MODEL_PRESET, else the base model folder's
  model.json, else the synthetic base preset (configs/demo.py). The hardware variant: the ':variant'
  suffix, else `hardware_name` when the module has a LAYOUTS entry for it, else the module's default.
  """
  from hb_jax.pipeline.config import from_config_dict

  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config={spec!r}: no such file {path!r}")
  name = os.path.splitext(os.path.basename(path))[0]
  mod_spec = importlib.util.spec_from_file_location(f"hb_estimate_config_{name}", path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  layouts = getattr(mod, "LAYOUTS", {})
  if not variant and hardware_name and hardware_name in layouts:
    variant = hardware_name
  if variant and layouts and variant not in layouts:
    raise ConfigError(f"--config={spec!r}: variant {variant!r} unknown; {path} defines {sorted(layouts)}")
  cd = mod.get_config(variant) if variant else mod.get_config()
  data = cd.to_dict() if hasattr(cd, "to_dict") else dict(cd)
  pcfg = from_config_dict({**data, "name": data.get("name") or name})
  layout = layouts.get(variant or getattr(mod, "DEFAULT_HARDWARE", ""))
  model_name = preset_name or getattr(mod, "MODEL_PRESET", "")
  model = _model(model_name, pcfg, path)
  if not model_name:
    model_name = pcfg.inputs.base_model or pcfg.base.preset
  return LoadedConfig(pcfg, model, model_name, getattr(layout, "hardware", "") or hardware_name or "h100",
                      getattr(layout, "chips", 0), getattr(layout, "slice", ""), path)


def _model(preset_name: str, pcfg, path: str) -> ModelConfig:
  from hb_jax.model.presets import preset
  if preset_name:
    return preset(preset_name)
  if pcfg.inputs.kind == "files":
    from etils import epath
    mj = epath.Path(pcfg.inputs.base_model) / "model.json"
    if mj.exists():
      return ModelConfig.from_json(mj.read_text(), str(mj))
    raise ConfigError(f"{path}: no MODEL_PRESET and no {mj}; pass --preset NAME")
  return preset(pcfg.base.preset, vocab_size=pcfg.base.vocab_size)


# -------------------------------------------------------------------------------------------------- output
def _h(x: float) -> str:
  return f"{x:,.1f}" if x >= 10 else f"{x:,.2f}"


def _bytes(x: float) -> str:
  for p, s in ((1e18, "EB"), (1e15, "PB"), (1e12, "TB"), (1e9, "GB"), (1e6, "MB")):
    if x >= p:
      return f"{x / p:.2f} {s}"
  return f"{x:.0f} B"


def format_text(est: Estimate) -> str:
  hw, a = est.hardware, est.assumptions
  count = lambda n: f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"
  lines = [f"hb_jax cost estimate: {est.config} ({est.model}, {count(est.params)} params, "
           f"{count(est.params_no_embedding)} without the input embedding) on {est.chips} x {hw.description}",
           f"  chip: {hw.peak_flops / 1e12:.0f} TFLOP/s bf16, {hw.hbm_bandwidth / 1e12:.2f} TB/s HBM, "
           f"{hw.memory / GB:.1f} GB ({hw.source})", ""]
  head = (f"{'stage':<22} {'FLOPs':>9} {'bytes':>10} {'chip-h':>9} {'wall-h':>8} {'roofline chip-h':>16} "
          f"{'mem/device':>10}")
  lines += [head, "-" * len(head)]
  for s in est.stages:
    mem = (f"{s.memory_per_device / GB:.0f} GB" + ("" if s.memory_fits else " (!)")) if s.memory_per_device else "-"
    lines.append(f"{s.stage:<22} {s.flops:>9.2e} {_bytes(s.bytes):>10} {_h(s.chip_hours):>9} "
                 f"{_h(s.wall_hours):>8} {_h(s.roofline_chip_hours):>16} {mem:>10}")
  lines.append("-" * len(head))
  lines.append(f"{'total':<22} {est.total('flops'):>9.2e} {_bytes(est.total('bytes')):>10} "
               f"{_h(est.total('chip_hours')):>9} {_h(est.total('wall_hours')):>8} "
               f"{_h(est.total('roofline_chip_hours')):>16}")
  gen = ("generate", "score")
  lines.append(f"{'  generation+curation':<22} {'':>9} {'':>10} {_h(est.total('chip_hours', gen)):>9} "
               f"{_h(est.total('wall_hours', gen)):>8} {_h(est.total('roofline_chip_hours', gen)):>16}")
  lines += ["", "stages:"]
  for s in est.stages:
    lines.append(f"  {s.stage}: {s.work}" + (f" [{s.bound}-bound decode]" if s.bound else ""))
    lines += [f"      {n}" for n in s.notes]
  lines += ["", "assumptions (override with --assume NAME=VALUE):"]
  for f in dataclasses.fields(a):
    lines.append(f"  {f.name} = {getattr(a, f.name):g}" if isinstance(getattr(a, f.name), float)
                 else f"  {f.name} = {getattr(a, f.name)}")
  lines.append("derived: " + ", ".join(f"{k} {v:,.0f}" for k, v in est.derived.items()))
  lines.append("hours: chip-h = chip-seconds / 3600 at the efficiencies above; wall-h = chip-h / chips used "
               "(bulk stages split records evenly over processes); roofline = 100% of peak FLOP/s or HBM "
               "bandwidth, every decode slot busy.")
  if est.warnings:
    lines += ["", "warnings:"] + [f"  {w}" for w in est.warnings]
  return "\n".join(lines)


__all__ = ["HARDWARE", "Hardware", "Assumptions", "Estimate", "StageEstimate", "estimate", "load_config",
           "train_memory", "serve_memory", "undivided_params", "format_text", "kv_bytes_per_token"]

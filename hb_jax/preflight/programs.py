"""What each stage of a run compiles, built by the pipeline's own code from abstract inputs, and what
hb_jax.estimate says each takes.

Stages and their sizes follow `hb_jax.estimate.estimate` (the same walk of the run's stages at the paper's data
sizes; a config's rows_per_micro_batch, batches and sampling settings where it gives them):

  train stages (backward, seed, train_t, no_curation)   hb_jax.train.step.jit_train_step on the training mesh
      over every device of the slice (train.mesh, mesh.rules), the training model config of
      hb_jax.train.loop (dropout, remat, compute dtype, fp32 master weights), AdamW state, donation, a
      [micro, rows, seq_len] batch laid out by hb_jax.data.loader.
  generation (augment, curate_t with method generate, evaluate)   hb_jax.sample.programs on one host's
      inference mesh (config.mesh over process 0's devices, SERVE_RULES): prefill_prefix (the shared rubric,
      when the stage has one), init_state, refill of a full batch (the first fill, the replica's worst moment),
      decode (one chunk of the while loop; its figure is per step), compact (the batch halved).
  scoring (curate_t digits / likelihood)   programs.next_token_logprobs / loglikelihood (+ the stacked prefix).

Serving reads the model folder's dtype: the base model folder's model.json when it can be read, else the
config's preset in bfloat16 (what configs/llama_common.py tells users to convert to); synthetic runs keep
their preset's dtype. Nothing is allocated: parameters, optimizer state, caches and batches are
ShapeDtypeStructs with the shardings the pipeline gives them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from hb_jax.config import DEFAULT_LENGTH_BUCKETS, ModelConfig, SampleConfig, TrainConfig
from hb_jax.estimate import memory as est_memory
from hb_jax.estimate.assumptions import Lengths
from hb_jax.estimate.stages import StageEstimate
from hb_jax.train import metrics

TRAIN_FIELDS = ("inputs", "targets", "loss_mask", "positions", "segment_ids")


@dataclasses.dataclass
class Program:
  stage: str  # the stage that runs it (the estimate's name: 'curate_1 digits' for a compared method)
  name: str  # train_step | prefill_prefix | init_state | refill | decode | compact | loglikelihood | ...
  mesh: Any  # the jax Mesh it is compiled for
  build: Callable[[dict], tuple[Callable, tuple, dict]]  # outputs of earlier programs -> (jitted fn, args, kwargs)
  groups: tuple[str | None, ...]  # per positional argument: what it holds (static, state, params, cache, inputs)
  estimate: dict[str, float]  # analytic bytes per device: arguments, outputs, temporaries, total (+ parts)
  estimate_flops: float | None  # analytic FLOPs per device per call
  shape: str  # the sizes it is compiled at, in words
  key: tuple  # programs with equal keys are the same program: compiled once
  notes: list[str] = dataclasses.field(default_factory=list)
  produces: str = ""  # name under which its abstract output is kept for later programs' `build`


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def abstract(x, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def shard_bytes(tree) -> float:
  """Bytes of one device's shard of every array of `tree` (ShapeDtypeStructs with shardings), no padding."""
  total = 0.0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


# ------------------------------------------------------------------------------------------------ train
def executed_train_flops(cfg: ModelConfig, *, rows: int, seq_len: int, micro_batches: int, remat: str) -> float:
  """FLOPs a train step executes over `rows` x `seq_len` slots (per micro-batch), by hb_jax.estimate's
  count: hb_jax.train.metrics.train_flops (6 per parameter without the input embedding per token, 12 x
  heads x head_dim x layers per attended pair) with every row slot a token and every (query, key) pair of a
  row attended (XLA's attention computes the masked half too), plus what remat runs again in the backward
  pass: under 'full' each layer's forward, less its last projection (down_proj: the backward pass never reads
  its output, the layer's output being what the layer scan saved), and the attention; under 'dots' (matmul
  outputs without batch dimensions saved) the attention's two batched matmuls."""
  tokens = micro_batches * rows * seq_len
  pairs = micro_batches * rows * seq_len * seq_len
  flops = metrics.train_flops(cfg, tokens, pairs)
  attention_forward = metrics.attention_flops_per_pair(cfg) / 3 * pairs
  if remat == "full":
    recomputed = cfg.num_layers * (cfg.params_per_layer - cfg.hidden_size * cfg.intermediate_size)
    flops += 2.0 * recomputed * tokens + attention_forward
  elif remat == "dots":
    flops += attention_forward
  return flops


def train_program(stage: str, est: StageEstimate, tc: TrainConfig, base_cfg: ModelConfig, target) -> Program:
  from hb_jax.data import loader
  from hb_jax.parallel import TRAIN_RULES, make_mesh, with_overrides
  from hb_jax.train import loop
  from hb_jax.train import step as step_lib

  cfg = loop.training_model_config(base_cfg, tc)
  rules = with_overrides(TRAIN_RULES, tc.mesh)
  mesh = make_mesh(tc.mesh, target.devices, all_devices=target.devices)
  data, fsdp, tensor = (mesh.shape[a] for a in ("data", "fsdp", "tensor"))
  ways = data * fsdp
  multiple = math.lcm(ways, target.hosts)
  rows = tc.rows_per_micro_batch or est.memory_breakdown["rows_per_device"] * ways
  rows = -(-rows // multiple) * multiple
  micro, T = tc.micro_batches, tc.seq_len
  num_steps = tc.num_steps or 1000  # the schedule's length only sets constants of the step, not its shape

  def build(_):
    tx, schedule = step_lib.make_optimizer(tc, num_steps)
    state = step_lib.abstract_state(cfg, tx, mesh, rules)  # outside jax.set_mesh: optax inits eagerly
    fn = step_lib.jit_train_step(cfg, tx, schedule, mesh, rules)
    local = loader.pack_micro_batches([], micro, rows, T, tc.packing)  # the loader's own arrays and dtypes
    shardings = step_lib.batch_shardings(mesh, rules)
    batch = {k: jax.ShapeDtypeStruct(local[k].shape, local[k].dtype, sharding=shardings[k]) for k in TRAIN_FIELDS}
    return fn, (state, batch), {}

  mem = est.memory_breakdown
  batch_bytes = len(TRAIN_FIELDS) * micro * (rows / ways) * T * 4.0
  args = mem["params_fp32"] + mem["adamw_fp32"] + batch_bytes
  temps = sum(mem[k] for k in ("grads_fp32", "compute_copies", "saved_activations", "layer_working_set", "logits"))
  estimate = {"arguments": args, "outputs": mem["params_fp32"] + mem["adamw_fp32"], "temporaries": temps,
              "total": args + temps, "parts": {k: v for k, v in mem.items() if isinstance(v, float)}}
  flops = executed_train_flops(cfg, rows=rows, seq_len=T, micro_batches=micro, remat=cfg.remat) / target_size(mesh)
  key = ("train_step", cfg, tc.mesh, tc.micro_batches, rows, T, tc.packing, tc.grad_clip_norm > 0)
  return Program(stage, "train_step", mesh, build, ("state", "inputs"), estimate, flops,
                 f"mesh {data}x{fsdp}x{tensor}, {micro} x {rows} rows x {T} tokens "
                 f"({rows // ways} per batch shard), remat {cfg.remat}, compute {_compute(cfg, target)}",
                 key)


def target_size(mesh) -> int:
  return math.prod(mesh.shape.values())


def _compute(cfg: ModelConfig, target) -> str:
  if cfg.dtype != "auto":
    return cfg.dtype
  return "float32" if target.platform == "cpu" else "bfloat16"


def restore_estimate(cfg: ModelConfig, stored_dtype: str, mesh, rules, *, train: bool) -> dict[str, float]:
  """Peak bytes per device while a model folder is restored onto the mesh (analytic, from the shard shapes).
  Orbax writes each device's shard of the stored params straight into HBM. Training then makes their fp32
  copy beside them (hb_jax.train.step.init_state; the stored ones are freed once it exists) and initialises
  the AdamW moments beside that: the peak is the larger of the two moments."""
  from hb_jax.parallel import abstract_params
  stored = shard_bytes(abstract_params(dataclasses.replace(cfg, param_dtype=stored_dtype), mesh, rules))
  out = {"stored_params": stored}
  if train:
    fp32 = shard_bytes(abstract_params(dataclasses.replace(cfg, param_dtype="float32"), mesh, rules))
    out["fp32_params"] = fp32 if stored_dtype != "float32" else 0.0
    out["adamw_fp32"] = 2 * fp32
    out["total"] = max(stored + out["fp32_params"], fp32 + 2 * fp32)
  else:
    out["total"] = stored
  return out


# ------------------------------------------------------------------------------------------- inference
@dataclasses.dataclass
class ServeSetup:
  """One host's inference replica of a model: its mesh, its abstract params, the model's graph."""
  cfg: ModelConfig
  mesh: Any
  graphdef: Any
  params: Any  # nnx.State of ShapeDtypeStructs with SERVE_RULES shardings

  @classmethod
  def make(cls, cfg: ModelConfig, pcfg, target) -> "ServeSetup":
    from hb_jax.model.llama import abstract_model
    from hb_jax.parallel import SERVE_RULES, make_mesh, param_shardings, with_overrides

    mesh = make_mesh(pcfg.mesh, target.local_devices, all_devices=target.devices)
    graphdef, state = abstract_model(cfg)  # what api.load's model splits into (hb_jax.sample.engine.Engine)
    shardings = param_shardings(state, with_overrides(SERVE_RULES, pcfg.mesh), mesh)
    return cls(cfg, mesh, graphdef, jax.tree.map(abstract, state, shardings))


def _ints(mesh, *shape, dtype=jnp.int32):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=replicated(mesh))


def generate_programs(stage: str, est: StageEstimate, serve: ServeSetup, sampling_cfg, batch: int,
                      target, page_size: int = 0) -> list[Program]:
  """The sampler's programs for one generation stage at its batch (per process), bucket and cache sizes;
  page_size > 0: over a paged KV cache (its pool holds every row's worst case, the contiguous cache's bytes)."""
  from hb_jax.sample import programs as sp
  from hb_jax.sample.prefix import padded_prefix
  from hb_jax.sample.sampling import Sampling

  cfg, mesh = serve.cfg, serve.mesh
  mem = est.memory_breakdown
  slots, prefix_slots = mem["slots"], mem["prefix_slots"]
  max_new = sampling_cfg.max_new_tokens
  bucket = slots - max_new
  config = SampleConfig(max_batch=batch)
  spec = sp.DecodeSpec(Sampling(sampling_cfg.temperature, sampling_cfg.top_k, sampling_cfg.top_p), max_new,
                       min(config.chunk_steps, max_new))
  B = batch
  rule = sp.StopRule.make(cfg.eos_ids, ())
  rule_abs = jax.tree.map(lambda x: abstract(x, replicated(mesh)), rule)
  base_key = (cfg, serve.mesh.shape_tuple, B, slots, max_new, prefix_slots, page_size)
  per_row = -(-slots // page_size) if page_size else 0
  table = (_ints(mesh, B, per_row),) if page_size else ()
  table_kind = ("inputs",) if page_size else ()
  compute = _compute(cfg, target)
  kv_bytes = jnp.dtype(compute).itemsize
  weight_bytes = jnp.dtype(cfg.param_dtype).itemsize
  data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
  rows = B / data_ways
  parts = est_memory.serve_memory(cfg, tensor=mesh.shape["tensor"], batch=rows, slots=slots, prompt_bucket=bucket,
                                  prefix_slots=prefix_slots, weight_bytes=weight_bytes, kv_bytes=kv_bytes)
  weights, kv, prefix_kv = parts["weights"], parts["kv_cache"], parts["prefix_cache"]
  row_state = rows * max_new * 8.0 + rows * slots * 8.0  # out tokens + logprobs; cache positions + segment ids
  shape = f"{B} rows x {slots} slots ({bucket} prompt + {max_new} new)" + (
      f" + {prefix_slots} shared" if prefix_slots else "") + (f", pages of {page_size}" if page_size else "") + \
      f", compute {compute}, weights {cfg.param_dtype}"
  out: list[Program] = []

  if prefix_slots:
    def build_prefix(_):
      arrays = padded_prefix(np.zeros(prefix_slots, np.int32))
      return sp.prefill_prefix, (serve.graphdef, serve.params, *(_ints(mesh, *a.shape) for a in arrays)), \
          {"per_layer": True}
    prefix_temp = est_memory.serve_memory(cfg, tensor=mesh.shape["tensor"], batch=1, slots=0,
                                          prompt_bucket=prefix_slots, prefix_slots=prefix_slots,
                                          weight_bytes=weight_bytes, kv_bytes=kv_bytes)["prefill_layer"]
    out.append(Program(stage, "prefill_prefix", mesh, build_prefix, ("static", "params", "inputs", "inputs", "inputs"),
                       _est(weights, prefix_kv, prefix_temp), _prefill_flops(cfg, 1, prefix_slots, 0, prefix_slots)
                       / mesh.shape["tensor"], f"1 x {prefix_slots} tokens", ("prefix", cfg, mesh.shape_tuple,
                                                                           prefix_slots, True),
                       produces=f"prefix:{prefix_slots}"))

  def prefix_of(outputs):
    return outputs.get(f"prefix:{prefix_slots}") if prefix_slots else None

  def build_init(_):
    return sp.init_state, (cfg, B, slots, max_new, page_size), {}
  out.append(Program(stage, "init_state", mesh, build_init, ("static",) * 5,
                     _est(0.0, kv + row_state, 0.0), 0.0, shape, ("init",) + base_key, produces=f"state:{base_key}"))

  def build_refill(outputs):
    R, T = B, bucket
    arrays = (_ints(mesh, R, T), _ints(mesh, R, T), _ints(mesh, R, T), _ints(mesh, R, 2, dtype=jnp.uint32),
              _ints(mesh, R))
    return sp.refill, (serve.graphdef, serve.params, outputs[f"state:{base_key}"], rule_abs, prefix_of(outputs),
                       *arrays, *table), {"spec": spec}
  refill_args = weights + kv + row_state + prefix_kv
  out.append(Program(stage, "refill", mesh, build_refill,
                     ("static", "params", "cache", "inputs", "cache", "inputs", "inputs", "inputs", "inputs", "inputs")
                     + table_kind,
                     _est(refill_args, kv + row_state, parts["refill_cache"] + parts["prefill_layer"], donated=True),
                     _prefill_flops(cfg, B, bucket, slots, prefix_slots) / target_size(mesh),
                     shape + f"; {B} prompts prefilled", ("refill",) + base_key + (spec,)))

  def build_decode(outputs):
    return sp.decode, (serve.graphdef, serve.params, outputs[f"state:{base_key}"], rule_abs, prefix_of(outputs),
                       _ints(mesh, B, dtype=jnp.bool_), _ints(mesh), *table), {"spec": spec}
  logits = parts["logits_and_state"] - rows * slots * 8.0
  out.append(Program(stage, "decode", mesh, build_decode, ("static", "params", "cache", "inputs", "cache",
                                                            "inputs", "inputs") + table_kind,
                     _est(weights + kv + row_state + prefix_kv, kv + row_state, logits, donated=True),
                     _decode_flops(cfg, B, slots, prefix_slots) / target_size(mesh),
                     shape + "; per decode step", ("decode",) + base_key + (spec,),
                     notes=["FLOPs and bytes per decode step: the loop runs until rows finish (counted once)"]))

  if B > 1:
    C = B // 2

    def build_compact(outputs):
      return sp.compact, (outputs[f"state:{base_key}"], _ints(mesh, C), _ints(mesh, C, dtype=jnp.bool_)), {}
    out.append(Program(stage, "compact", mesh, build_compact, ("cache", "inputs", "inputs"),
                       _est(kv + row_state, (kv + row_state) / 2, 0.0), 0.0, f"{B} -> {C} rows x {slots} slots",
                       ("compact",) + base_key))
  return out


def score_programs(stage: str, method: str, serve: ServeSetup, lengths: Lengths, batch: int, target,
                   buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS, extra_tokens: int = 0) -> list[Program]:
  """The scorer's forward for `digits` (next-token log-probs after the shared rubric; `extra_tokens` more per
  row for generate's fallback, which reads them after the reasoning) or `likelihood`."""
  from hb_jax.estimate.stages import _prefix_slots
  from hb_jax.sample import plan
  from hb_jax.sample import programs as sp
  from hb_jax.sample.prefix import padded_prefix

  cfg, mesh = serve.cfg, serve.mesh
  config = SampleConfig(score_batch=batch)
  b = plan.bucket_batch(batch, config.score_batch)
  compute = _compute(cfg, target)
  kv_bytes, weight_bytes = jnp.dtype(compute).itemsize, jnp.dtype(cfg.param_dtype).itemsize
  tensor, data_ways = mesh.shape["tensor"], mesh.shape["data"] * mesh.shape["fsdp"]
  out: list[Program] = []
  if method == "digits":
    prefix_slots = _prefix_slots(lengths.curation_prefix)
    t = plan.bucket_length(math.ceil(lengths.curation_suffix_max + extra_tokens + 3), buckets)
  else:
    prefix_slots = 0
    t = plan.bucket_length(math.ceil(_likelihood_max(lengths)), buckets)
  parts = est_memory.serve_memory(cfg, tensor=tensor, batch=b / data_ways, slots=t, prompt_bucket=t,
                                  prefix_slots=prefix_slots, weight_bytes=weight_bytes, kv_bytes=kv_bytes)
  if prefix_slots:
    def build_prefix(_):
      arrays = padded_prefix(np.zeros(prefix_slots, np.int32))
      return sp.prefill_prefix, (serve.graphdef, serve.params, *(_ints(mesh, *a.shape) for a in arrays)), \
          {"per_layer": False}
    prefix_temp = est_memory.serve_memory(cfg, tensor=tensor, batch=1, slots=0, prompt_bucket=prefix_slots,
                                          prefix_slots=prefix_slots, weight_bytes=weight_bytes,
                                          kv_bytes=kv_bytes)["prefill_layer"]
    out.append(Program(stage, "prefill_prefix", mesh, build_prefix, ("static", "params", "inputs", "inputs", "inputs"),
                       _est(parts["weights"], parts["prefix_cache"], prefix_temp),
                       _prefill_flops(cfg, 1, prefix_slots, 0, prefix_slots) / tensor, f"1 x {prefix_slots} tokens",
                       ("prefix", cfg, mesh.shape_tuple, prefix_slots, False),
                       produces=f"stacked_prefix:{prefix_slots}"))
  shape = f"{b} rows x {t} tokens" + (f" after {prefix_slots} shared" if prefix_slots else "") + \
      f", compute {compute}, weights {cfg.param_dtype}"
  inputs = b / data_ways * t * 4.0
  if method == "digits":
    def build(outputs):
      return sp.next_token_logprobs, (serve.graphdef, serve.params, outputs[f"stacked_prefix:{prefix_slots}"],
                                      _ints(mesh, b, t), _ints(mesh, b, t), _ints(mesh, b, t), _ints(mesh, b),
                                      _ints(mesh, 5)), {}
    name, groups, n_inputs = "next_token_logprobs", ("static", "params", "cache") + ("inputs",) * 5, 3
    logits = b / data_ways * cfg.vocab_size * 4.0 * 2
  else:
    def build(outputs):
      return sp.loglikelihood, (serve.graphdef, serve.params, None, *(_ints(mesh, b, t) for _ in range(4)),
                                jax.ShapeDtypeStruct((b, t), jnp.float32, sharding=replicated(mesh))), \
          {"score_block": config.score_block}
    name, groups, n_inputs = "loglikelihood", ("static", "params", "cache") + ("inputs",) * 5, 5
    logits = b / data_ways * min(config.score_block, t) * cfg.vocab_size * 4.0 * 2
  forward = _prefill_flops(cfg, b, t, t, prefix_slots) / target_size(mesh)
  out.append(Program(stage, name, mesh, build, groups,
                     _est(parts["weights"] + parts["prefix_cache"] + n_inputs * inputs, 0.0,
                          parts["prefill_layer"] + logits), forward, shape,
                     (name, cfg, mesh.shape_tuple, b, t, prefix_slots)))
  return out


def _likelihood_max(lengths: Lengths) -> float:
  """The longest likelihood sequence: the forward template, a generated instruction and the longest segment."""
  return lengths.augmented_forward - lengths.augment_prompt + lengths.augment_prompt_max


def _est(arguments: float, outputs: float, temporaries: float, *, donated: bool = False) -> dict[str, float]:
  """An estimate's bytes per device; `donated`: the outputs reuse the donated arguments' buffers."""
  return {"arguments": arguments, "outputs": outputs, "temporaries": temporaries,
          "total": arguments + temporaries + (0.0 if donated else outputs)}


def _prefill_flops(cfg: ModelConfig, rows: int, length: int, slots: int, prefix_slots: int) -> float:
  from hb_jax.estimate import cost
  return cost.prefill(cfg, rows=rows, prompt_len=length, slots=slots, prefix_slots=prefix_slots).flops


def _decode_flops(cfg: ModelConfig, rows: int, slots: int, prefix_slots: int) -> float:
  from hb_jax.estimate import cost
  return cost.decode_step(cfg, rows=rows, slots=slots, prefix_slots=prefix_slots).flops

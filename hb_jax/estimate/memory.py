"""Bytes per device of the programs a run compiles, as functions of the model, the mesh and the batch:
`train_memory` (one training step under TRAIN_RULES) and `serve_memory` (one inference replica under
SERVE_RULES at its worst moment). Both assume every mesh axis divides what it shards, which
`hb_jax.parallel.undivided_params` checks.

The launch configs' docstrings (configs/llama*.py) quote these numbers; tests/test_estimate.py checks them.
"""
from __future__ import annotations

from hb_jax.config import ModelConfig
from hb_jax.estimate.hardware import Hardware


def kv_bytes_per_token(cfg: ModelConfig, dtype_bytes: float = 2.0) -> float:
  """K and V of one token, all layers."""
  return 2.0 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * dtype_bytes


def param_bytes_per_device(cfg: ModelConfig, mesh_shape: dict[str, int], rules, dtype_bytes: float) -> float:
  """Bytes of one device's shard of every parameter when `rules` place them on a mesh of `mesh_shape`, as
  hb_jax.parallel places them: RMSNorm scales whole on every device, and a dimension its mesh axis does not
  divide (KV heads fewer than the tensor axis) whole too. What a compiled program's parameter arguments take,
  to the byte, where the TPU's tiles add no padding (hb_jax.preflight checks it)."""
  import math
  from flax import nnx
  from hb_jax.model.llama import abstract_model
  from hb_jax.parallel import logical_to_spec
  total = 0.0
  for _, var in nnx.to_flat_state(abstract_model(cfg)[1]):
    axes = var.get_metadata().get("logical_axes")
    split = 1
    if axes is not None:
      for entry in logical_to_spec(axes, var.shape, rules, mesh_shape):
        for axis in (() if entry is None else (entry,) if isinstance(entry, str) else entry):
          split *= mesh_shape[axis]
    total += math.prod(var.shape) / split * dtype_bytes
  return total


def kv_split(cfg: ModelConfig, tensor: int) -> int:
  """How many ways the KV heads split over `tensor` (parallel.py replicates them when it doesn't divide)."""
  return tensor if cfg.num_kv_heads % tensor == 0 else 1


def train_memory(cfg: ModelConfig, *, fsdp: int, tensor: int, rows_per_device: int, seq_len: int,
                 micro_batches: int, remat: str = "full") -> dict[str, float]:
  """Bytes per device of one training step under TRAIN_RULES (params sharded over fsdp x tensor).

  fp32 master params, AdamW mu and nu (fp32), fp32 gradients (+ the fp32 accumulator with micro-batches);
  bf16 compute copies: a layer's weights all-gathered over fsdp (this layer and the next in flight) and its
  fp32 gradient before the reduce-scatter; activations: the layer inputs kept for the backward pass under
  remat, one layer's recomputed working set (fp32 attention scores, probs and their gradient; MLP and
  projections) and the fp32 logits with their gradient.
  """
  from hb_jax.parallel import TRAIN_RULES
  params = param_bytes_per_device(cfg, {"data": 1, "fsdp": fsdp, "tensor": tensor}, TRAIN_RULES, 4.0)
  r, t, d, L = rows_per_device, seq_len, cfg.hidden_size, cfg.num_layers
  heads, f, v = cfg.num_heads / tensor, cfg.intermediate_size / tensor, cfg.vocab_size / tensor
  layer = cfg.params_per_layer / tensor
  head = cfg.vocab_size * d / tensor
  out = {
      "params_fp32": params,
      "adamw_fp32": 2 * params,
      "grads_fp32": params * (2 if micro_batches > 1 else 1),
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
  of their own before scattering it into the batch's (hb_jax/sample/programs.py `refill`), with one
  layer's fp32 attention scores over the prefix and every slot."""
  from hb_jax.parallel import SERVE_RULES
  heads, f = cfg.num_heads / tensor, cfg.intermediate_size / tensor
  per_slot = kv_bytes_per_token(cfg, kv_bytes) / kv_split(cfg, tensor)
  kv = batch * slots * per_slot
  out = {
      "weights": param_bytes_per_device(cfg, {"data": 1, "fsdp": 1, "tensor": tensor}, SERVE_RULES, weight_bytes),
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

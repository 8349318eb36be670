"""FLOPs and HBM bytes of one call of each program a run compiles, as functions of the model and the
batch: `train_step`, `prefill`, `decode_step` and `forward` (scoring). Each returns a `ProgramCost` for the
devices the call runs on (the whole mesh for training, one replica for the rest); `.per_device(n)` divides
it over them, which is what a compiler's per-device cost analysis reports.

Conventions (hb_jax.train.metrics for training, DESIGN.md's MFU): FLOPs are model FLOPs, 2 per parameter
without the input embedding per token forward, 6 for training, plus attention per (query, key) pair; bytes
are HBM traffic of weights, KV cache and optimizer state (activations are not counted). The sampler's
attention reads every allocated slot (masked, not skipped), so prefill and decode count every slot as a key.
"""
from __future__ import annotations

import dataclasses

from hb_jax.config import ModelConfig
from hb_jax.estimate.memory import kv_bytes_per_token
from hb_jax.train import metrics


@dataclasses.dataclass(frozen=True)
class ProgramCost:
  flops: float
  bytes: float

  def per_device(self, devices: int) -> "ProgramCost":
    return ProgramCost(self.flops / devices, self.bytes / devices)


def attention_flops_per_key(cfg: ModelConfig) -> float:
  """Forward FLOPs of one (query, key) pair, all layers: QK^T and PV, 2 x head_dim each, per head (a third
  of the trainer's forward + backward count)."""
  return metrics.attention_flops_per_pair(cfg) / 3


def train_step_bytes(cfg: ModelConfig, *, micro_batches: int, chips: int, tensor: int) -> float:
  """HBM bytes of one optimizer step over `chips` (params sharded over all of them, `tensor` ways within a
  layer): the AdamW update reads params, grads, mu, nu and writes params, mu, nu (fp32, once over all
  shards); every pass of every micro-batch (forward, remat recompute, backward) reads the bf16 gathered
  weights on each chip (1/tensor of them)."""
  n = cfg.num_params
  return 28.0 * n + micro_batches * 3 * 2.0 * n * chips / tensor


def train_step(cfg: ModelConfig, *, tokens: float, attention_pairs: float, micro_batches: int, chips: int,
               tensor: int) -> ProgramCost:
  """One optimizer step over `chips` that trains on `tokens` real tokens attending to `attention_pairs`
  keys (per example, positions restart: a packed row of examples of length l_i has sum l_i (l_i + 1) / 2)."""
  return ProgramCost(metrics.train_flops(cfg, tokens, attention_pairs),
                     train_step_bytes(cfg, micro_batches=micro_batches, chips=chips, tensor=tensor))


def prefill(cfg: ModelConfig, *, rows: float, prompt_len: float, slots: float, prefix_slots: int = 0,
            weight_bytes: float = 2.0) -> ProgramCost:
  """One prefill call on a replica: `rows` prompts padded to `prompt_len` tokens, each attending to the
  shared prefix's `prefix_slots` and every one of its own cache's `slots`; the weights are read once."""
  flops = rows * (2.0 * cfg.num_params_no_embedding * prompt_len
                  + attention_flops_per_key(cfg) * prompt_len * (prefix_slots + slots))
  return ProgramCost(flops, cfg.num_params_no_embedding * weight_bytes)


def decode_step(cfg: ModelConfig, *, rows: float, slots: float, prefix_slots: int = 0, weight_bytes: float = 2.0,
                kv_bytes: float = 2.0) -> ProgramCost:
  """One decode step of a replica: one new token for each of `rows` rows, which reads the weights, the
  whole allocated KV cache (`slots` per row) and the shared prefix's `prefix_slots` once."""
  n = cfg.num_params_no_embedding
  step_bytes = n * weight_bytes + (prefix_slots + rows * slots) * kv_bytes_per_token(cfg, kv_bytes)
  step_flops = rows * (2.0 * n + attention_flops_per_key(cfg) * (prefix_slots + slots))
  return ProgramCost(step_flops, step_bytes)


def forward(cfg: ModelConfig, *, rows: float, length: float, keys: float, weight_bytes: float = 2.0) -> ProgramCost:
  """One scoring forward pass on a replica: `rows` sequences of `length` tokens, each attending to `keys`
  keys (its own padded length, plus a shared prefix's slots); the weights are read once."""
  n = cfg.num_params_no_embedding
  return ProgramCost(rows * (2.0 * n * length + attention_flops_per_key(cfg) * length * keys), n * weight_bytes)

"""Training metrics: FLOPs and MFU (DESIGN.md's formula), and writers (JSONL always, TensorBoard on request).

MFU counts model FLOPs only: 6 x (parameters without the input embedding) per trained token, plus causal
attention: per layer and attended (query, key) pair, 2 x 2 x heads x head_dim forward (QK^T and PV), times 3
for forward + backward. Padding slots are not model FLOPs and are not counted.
"""
from __future__ import annotations

import json
import time
from typing import Any, Mapping

import jax
from etils import epath

from hb_jax.config import ModelConfig
from hb_jax.estimate.hardware import for_device_kind

def attention_flops_per_pair(cfg: ModelConfig) -> float:
  """Training FLOPs of one attended (query, key) pair, all layers: 3 x 4 x heads x head_dim x layers."""
  return 12.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim


def train_flops(cfg: ModelConfig, tokens: float, attention_pairs: float) -> float:
  """Model FLOPs of a training step over `tokens` real tokens attending to `attention_pairs` keys."""
  return 6.0 * cfg.num_params_no_embedding * tokens + attention_flops_per_pair(cfg) * attention_pairs


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token of full, unpacked causal rows of `seq_len` tokens."""
  return 6.0 * cfg.num_params_no_embedding + attention_flops_per_pair(cfg) * (seq_len + 1) / 2


def peak_flops_per_device(override: float = 0.0) -> float:
  """The configured peak, else the bf16 peak of this accelerator in hb_jax.estimate.hardware's table, else 0
  (MFU not reported)."""
  if override > 0:
    return override
  chip = for_device_kind(jax.devices()[0].device_kind)
  return chip.peak_flops if chip else 0.0


class Throughput:
  """Tokens/s and MFU over the steps since the last `report` (wall clock, so it includes data loading)."""

  def __init__(self, cfg: ModelConfig, peak_total: float):
    self.cfg, self.peak_total = cfg, peak_total
    self.reset()

  def reset(self) -> None:
    self.t0 = time.perf_counter()
    self.tokens = self.pairs = 0.0

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` (e.g. a validation pass) out of the current window's wall clock."""
    self.t0 += seconds

  def add(self, tokens: float, attention_pairs: float) -> None:
    self.tokens += tokens
    self.pairs += attention_pairs

  def report(self) -> dict[str, float]:
    dt = max(time.perf_counter() - self.t0, 1e-9)
    out = {"tokens_per_s": self.tokens / dt}
    if self.peak_total > 0:
      out["mfu"] = train_flops(self.cfg, self.tokens, self.pairs) / dt / self.peak_total
    self.reset()
    return out


class MetricsWriter:
  """Appends one JSON object per call to `metrics.jsonl`; mirrors scalars to TensorBoard if asked.

  Only process 0 writes. The JSONL is appended to (a resumed run continues the same file; each line
  carries its step, so repeated steps after a crash are visible rather than hidden).
  """

  def __init__(self, directory, *, tensorboard: bool = False):
    self.directory = epath.Path(directory)
    self.enabled = jax.process_index() == 0
    self._tb = None
    self._file = None
    if not self.enabled:
      return
    self.directory.mkdir(parents=True, exist_ok=True)
    self._file = (self.directory / "metrics.jsonl").open("a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # no tensorflow needed
      self._tb = SummaryWriter(str(self.directory / "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "time": time.time(), **{k: _plain(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(row, sort_keys=True) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k not in ("step", "time") and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _plain(v):
  try:
    return float(v) if not isinstance(v, (str, bool, int, dict, list)) else v
  except (TypeError, ValueError):
    return str(v)

"""The accelerator chips hb_jax knows: one table of data-sheet facts, read by the cost model (`--hardware`)
and by training's MFU (`hb_jax.train.metrics.peak_flops_per_device`, matched on JAX's `device_kind`).

A JAX device is one chip on every kind here (TPU v4 and v5p run their two TensorCores as one megacore
device), so per-chip figures are per-device figures.
"""
from __future__ import annotations

import dataclasses
import re

from hb_jax.config import ConfigError

GB = 1e9  # the unit memory is reported in (vendors' GB; TPU v4's 32 GiB is 34.4 of these)


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
  # Names of this chip in `jax.devices()[0].device_kind`, matched as whole words ("L4" is not "L40S").
  device_kinds: tuple[str, ...] = ()


HARDWARE: dict[str, Hardware] = {h.name: h for h in (
    Hardware("h100", "NVIDIA H100 SXM5 80GB", 989e12, 3.35e12, 80e9, 8,
             "NVIDIA H100 data sheet: 989 TFLOPS bf16 dense (1,979 with sparsity), 3.35 TB/s HBM3, 80 GB",
             ("H100",)),
    Hardware("h200", "NVIDIA H200 SXM 141GB", 989e12, 4.8e12, 141e9, 8,
             "NVIDIA H200 data sheet: 989 TFLOPS bf16 dense, 4.8 TB/s HBM3e, 141 GB", ("H200",)),
    Hardware("a100", "NVIDIA A100 SXM 80GB", 312e12, 2.039e12, 80e9, 8,
             "NVIDIA A100 data sheet: 312 TFLOPS bf16 dense, 2,039 GB/s HBM2e, 80 GB", ("A100",)),
    Hardware("l4", "NVIDIA L4 24GB", 121e12, 300e9, 24e9, 8,
             "NVIDIA L4 data sheet: 121 TFLOPS bf16 dense (242 with sparsity), 300 GB/s GDDR6, 24 GB; "
             "8 per g2-standard-96 host", ("L4",)),
    Hardware("tpu-v4", "Google Cloud TPU v4", 275e12, 1.2e12, 32 * 2**30, 4,
             "Cloud TPU v4 docs: 275 TFLOPS bf16 per chip, HBM2 32 GiB at 1,200 GB/s, 4 chips per host",
             ("TPU v4",)),
    Hardware("tpu-v5e", "Google Cloud TPU v5e", 197e12, 819e9, 16e9, 8,
             "Cloud TPU v5e docs: 197 TFLOPS bf16 per chip, HBM2 16 GB at 819 GB/s, 8 chips per host",
             ("TPU v5 lite", "TPU v5e")),
    Hardware("tpu-v5p", "Google Cloud TPU v5p", 459e12, 2.765e12, 95e9, 4,
             "Cloud TPU v5p docs: 459 TFLOPS bf16 per chip, HBM2e 95 GB at 2,765 GB/s, 4 chips per host",
             ("TPU v5p",)),
    Hardware("tpu-v6e", "Google Cloud TPU v6e (Trillium)", 918e12, 1.638e12, 32e9, 8,
             "Cloud TPU v6e docs: 918 TFLOPS bf16 per chip, HBM 32 GB at 1,638 GB/s, 8 chips per host",
             ("TPU v6 lite", "TPU v6e")),
)}


def hardware(name: str) -> Hardware:
  if name not in HARDWARE:
    raise ConfigError(f"--hardware={name!r}: expected one of {sorted(HARDWARE)}")
  return HARDWARE[name]


def for_device_kind(kind: str) -> Hardware | None:
  """The chip whose `device_kinds` name `kind` (a JAX `device_kind`) as a whole word, the most specific
  name winning; None for a chip not in the table (and for CPUs)."""
  best, best_len = None, 0
  for chip in HARDWARE.values():
    for name in chip.device_kinds:
      if len(name) > best_len and re.search(rf"(?<!\w){re.escape(name)}(?!\w)", kind, re.IGNORECASE):
        best, best_len = chip, len(name)
  return best

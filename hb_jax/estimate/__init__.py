"""Cost model of a Humpback run at the paper's sizes: FLOPs, bytes moved, hours and memory per stage.

    python tools/estimate.py --config=configs/llama65b.py --hardware tpu-v5p [--chips 32] [--json]

One job per module, data flowing down:
  hardware.py     the chips (peak FLOP/s, HBM bytes and bandwidth, chips per host, JAX device kinds); training's
                  MFU reads the same table
  memory.py       bytes per device of a training step and of an inference replica, for a model, mesh and batch
  cost.py         FLOPs and HBM bytes of one call of each program: train step, prefill, decode step, scoring
  assumptions.py  what the paper does not say (data sizes, lengths, efficiencies), and the token lengths it implies
  stages.py       `estimate`: every pipeline stage at the paper's sizes -> FLOPs, bytes, chip- and wall-hours
  report.py       the estimate as text (`Estimate.to_dict` is the JSON)
  configs.py      `load_config`: a launch config file (configs/X.py[:variant]) -> pipeline config, model, hardware
"""
from hb_jax.estimate.assumptions import Assumptions
from hb_jax.estimate.configs import LoadedConfig, load_config
from hb_jax.estimate.cost import ProgramCost, decode_step, forward, prefill, train_step
from hb_jax.estimate.hardware import HARDWARE, Hardware, for_device_kind, hardware
from hb_jax.estimate.memory import kv_bytes_per_token, max_serving_batch, serve_memory, train_memory
from hb_jax.estimate.report import format_text
from hb_jax.estimate.stages import Estimate, StageEstimate, _Estimator, estimate

__all__ = ["HARDWARE", "Hardware", "hardware", "for_device_kind", "Assumptions", "Estimate", "StageEstimate",
           "estimate", "load_config", "LoadedConfig", "train_memory", "serve_memory", "max_serving_batch",
           "kv_bytes_per_token", "ProgramCost", "train_step", "prefill", "decode_step",
           "forward", "format_text"]

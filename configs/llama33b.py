"""Humpback on LLaMA-1 33B (32.5B parameters; the paper's inputs from files; see
configs/llama_common.py).

    python launch/run.py --config=configs/llama33b.py:tpu-v5p --workdir=gs://BUCKET/runs/llama33b \
        --config.inputs.seed_jsonl=... --config.inputs.segments_jsonl=... --config.inputs.base_model=...
    python tools/estimate.py --config=configs/llama33b.py:tpu-v5p     # FLOPs, bytes, hours per stage

Variants (LAYOUTS below, the `:NAME` suffix): h100 (the default), tpu-v4, tpu-v5p. One micro-batch per step
everywhere: the paper's 32 examples (~13k tokens) already fit, and splitting them only adds padded rows.

Memory per device, GB = 1e9 bytes (hb_jax.estimate.train_memory / serve_memory; tests/test_estimate.py checks
each fits in 90% of HBM). Weights 32.5B params: 130 GB fp32, 65 GB bf16; KV cache 1.60 MB per token (60 layers
x 52 KV heads x 128 x K,V x bf16). Serving reads the model folder's dtype: convert with --param_dtype
bfloat16.

h100: 2 hosts x 8 H100 80GB, 80 GB per chip. Training mesh 1x4x4 (data x fsdp x tensor), 1 micro-batch of 32
  examples, 3 row(s) of 2048 per device: fp32 params 8.1 + AdamW mu,nu 16.3 + fp32 grads 8.1 + layer copies
  (bf16 gathered x2, fp32 grad) 1.4 + layer inputs under remat 4.9 + one layer's working set 2.6 + logits 0.5
  = 41.9 GB. Inference: replicas of 4 chips (2 per host), bf16 weights 16.3 per chip; augment 32 rows x 1280
  slots: KV 16.4 + first-refill copy 16.4 + prefill layer 5.9 = 54.9; curate 32 rows x 1280 slots: KV 16.4 +
  first-refill copy 16.4 + 640 shared rubric slots 0.3 + prefill layer 7.5 = 56.8; evaluate 32 rows x 1024
  slots: KV 13.1 + first-refill copy 13.1 + prefill layer 2.6 = 45.1 GB.

tpu-v4: v4-64 (32 chips, 8 hosts), 34 GB per chip. Training mesh 1x8x4 (data x fsdp x tensor), 1 micro-batch
  of 32 examples, 2 row(s) of 2048 per device: fp32 params 4.1 + AdamW mu,nu 8.1 + fp32 grads 4.1 + layer
  copies (bf16 gathered x2, fp32 grad) 1.4 + layer inputs under remat 3.3 + one layer's working set 1.7 +
  logits 0.3 = 23.0 GB. Inference: replicas of 4 chips (1 per host), bf16 weights 16.3 per chip; augment 8
  rows x 1280 slots: KV 4.1 + first-refill copy 4.1 + prefill layer 1.5 = 25.9; curate 8 rows x 1280 slots: KV
  4.1 + first-refill copy 4.1 + 640 shared rubric slots 0.3 + prefill layer 1.9 = 26.6; evaluate 16 rows x
  1024 slots: KV 6.5 + first-refill copy 6.5 + prefill layer 1.3 = 30.7 GB.

tpu-v5p: v5p-32 (16 chips, 4 hosts), 95 GB per chip. Training mesh 1x4x4 (data x fsdp x tensor), 1 micro-batch
  of 32 examples, 3 row(s) of 2048 per device: fp32 params 8.1 + AdamW mu,nu 16.3 + fp32 grads 8.1 + layer
  copies (bf16 gathered x2, fp32 grad) 1.4 + layer inputs under remat 4.9 + one layer's working set 2.6 +
  logits 0.5 = 41.9 GB. Inference: replicas of 4 chips (1 per host), bf16 weights 16.3 per chip; augment 32
  rows x 1280 slots: KV 16.4 + first-refill copy 16.4 + prefill layer 5.9 = 54.9; curate 32 rows x 1280 slots:
  KV 16.4 + first-refill copy 16.4 + 640 shared rubric slots 0.3 + prefill layer 7.5 = 56.8; evaluate 64 rows
  x 1024 slots: KV 26.2 + first-refill copy 26.2 + prefill layer 5.2 = 73.9 GB.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_common import Layout, base_config, pick  # noqa: E402

MODEL_PRESET = "llama-33b"
DEFAULT_HARDWARE = "h100"
LAYOUTS = {
    "h100": Layout("h100", "2 hosts x 8 H100 80GB", chips=16, tensor=4, micro_batches=1,
                   infer_tensor=4, augment_batch=64, curate_batch=64, evaluate_batch=64),
    "tpu-v4": Layout("tpu-v4", "v4-64 (32 chips, 8 hosts)", chips=32, tensor=4, micro_batches=1,
                   infer_tensor=4, augment_batch=8, curate_batch=8, evaluate_batch=16),
    "tpu-v5p": Layout("tpu-v5p", "v5p-32 (16 chips, 4 hosts)", chips=16, tensor=4, micro_batches=1,
                   infer_tensor=4, augment_batch=32, curate_batch=32, evaluate_batch=64),
}


def get_config(hardware: str = DEFAULT_HARDWARE):
  return base_config("llama33b", root="/data/humpback", layout=pick(LAYOUTS, hardware, __file__))

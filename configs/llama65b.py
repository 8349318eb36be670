"""Humpback on LLaMA-1 65B (65.3B parameters; the paper's inputs from files; see
configs/llama_common.py).

    python launch/run.py --config=configs/llama65b.py:tpu-v5p --workdir=gs://BUCKET/runs/llama65b \
        --config.inputs.seed_jsonl=... --config.inputs.segments_jsonl=... --config.inputs.base_model=...
    python tools/estimate.py --config=configs/llama65b.py:tpu-v5p     # FLOPs, bytes, hours per stage

Variants (LAYOUTS below, the `:NAME` suffix): h100 (the default), tpu-v4, tpu-v5p. One micro-batch per step
everywhere: the paper's 32 examples (~13k tokens) already fit, and splitting them only adds padded rows.

Memory per device, GB = 1e9 bytes (hb_jax.estimate.train_memory / serve_memory; tests/test_estimate.py checks
each fits in 90% of HBM). Weights 65.3B params: 261 GB fp32, 131 GB bf16; KV cache 2.62 MB per token (80
layers x 64 KV heads x 128 x K,V x bf16). Serving reads the model folder's dtype: convert with --param_dtype
bfloat16.

h100: 4 hosts x 8 H100 80GB, 80 GB per chip. Training mesh 1x4x8 (data x fsdp x tensor), 1 micro-batch of 32
  examples, 3 row(s) of 2048 per device: fp32 params 8.2 + AdamW mu,nu 16.3 + fp32 grads 8.2 + layer copies
  (bf16 gathered x2, fp32 grad) 1.0 + layer inputs under remat 8.1 + one layer's working set 2.0 + logits 0.2
  = 44.0 GB. Inference: replicas of 8 chips (1 per host), bf16 weights 16.3 per chip; augment 32 rows x 1280
  slots: KV 13.4 + first-refill copy 13.4 + prefill layer 4.7 = 47.9; curate 32 rows x 1280 slots: KV 13.4 +
  first-refill copy 13.4 + 640 shared rubric slots 0.2 + prefill layer 5.7 = 49.1; evaluate 64 rows x 1024
  slots: KV 21.5 + first-refill copy 21.5 + prefill layer 4.3 = 63.6 GB.

tpu-v4: v4-128 (64 chips, 16 hosts), 34 GB per chip. Training mesh 1x16x4 (data x fsdp x tensor), 1 micro-
  batch of 32 examples, 1 row(s) of 2048 per device: fp32 params 4.1 + AdamW mu,nu 8.2 + fp32 grads 4.1 +
  layer copies (bf16 gathered x2, fp32 grad) 2.0 + layer inputs under remat 2.7 + one layer's working set 1.1
  + logits 0.2 = 22.3 GB. Inference does not fit: a replica must live in one host (4 chips, 137 GB) and the
  bf16 weights alone are 131 GB; run backward/seed/train_t here and augment/curate_t/evaluate on tpu-v5p or
  h100 (docs/launch.md).

tpu-v5p: v5p-64 (32 chips, 8 hosts), 95 GB per chip. Training mesh 1x8x4 (data x fsdp x tensor), 1 micro-batch
  of 32 examples, 2 row(s) of 2048 per device: fp32 params 8.2 + AdamW mu,nu 16.3 + fp32 grads 8.2 + layer
  copies (bf16 gathered x2, fp32 grad) 2.0 + layer inputs under remat 5.4 + one layer's working set 2.1 +
  logits 0.3 = 42.5 GB. Inference: replicas of 4 chips (1 per host), bf16 weights 32.6 per chip; augment 16
  rows x 1280 slots: KV 13.4 + first-refill copy 13.4 + prefill layer 3.6 = 63.1; curate 16 rows x 1280 slots:
  KV 13.4 + first-refill copy 13.4 + 640 shared rubric slots 0.4 + prefill layer 4.6 = 64.5; evaluate 32 rows
  x 1024 slots: KV 21.5 + first-refill copy 21.5 + prefill layer 3.2 = 78.8 GB.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_common import Layout, base_config, pick  # noqa: E402

MODEL_PRESET = "llama-65b"
DEFAULT_HARDWARE = "h100"
LAYOUTS = {
    "h100": Layout("h100", "4 hosts x 8 H100 80GB", chips=32, tensor=8, micro_batches=1,
                   infer_tensor=8, augment_batch=32, curate_batch=32, evaluate_batch=64),
    "tpu-v4": Layout("tpu-v4", "v4-128 (64 chips, 16 hosts)", chips=64, tensor=4, micro_batches=1,
                   infer_tensor=4, augment_batch=1, curate_batch=1, evaluate_batch=1, serves=False),
    "tpu-v5p": Layout("tpu-v5p", "v5p-64 (32 chips, 8 hosts)", chips=32, tensor=4, micro_batches=1,
                   infer_tensor=4, augment_batch=16, curate_batch=16, evaluate_batch=32),
}


def get_config(hardware: str = DEFAULT_HARDWARE):
  return base_config("llama65b", root="/data/humpback", layout=pick(LAYOUTS, hardware, __file__))

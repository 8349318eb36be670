"""Humpback on LLaMA-2 70B (69.0B parameters, GQA with 8 KV heads; the paper's inputs from files; see
configs/llama_common.py).

    python launch/run.py --config=configs/llama2_70b.py:tpu-v5p --workdir=gs://BUCKET/runs/llama2_70b \
        --config.inputs.seed_jsonl=... --config.inputs.segments_jsonl=... --config.inputs.base_model=...
    python tools/estimate.py --config=configs/llama2_70b.py:tpu-v5p     # FLOPs, bytes, hours per stage

Variants (LAYOUTS below, the `:NAME` suffix): h100 (the default), tpu-v4, tpu-v5p. One micro-batch per step
everywhere: the paper's 32 examples (~13k tokens) already fit, and splitting them only adds padded rows.

Memory per device, GB = 1e9 bytes (hb_jax.estimate.train_memory / serve_memory; tests/test_estimate.py checks
each fits in 90% of HBM). Weights 69.0B params: 276 GB fp32, 138 GB bf16; KV cache 0.33 MB per token (80
layers x 8 KV heads x 128 x K,V x bf16). Serving reads the model folder's dtype: convert with --param_dtype
bfloat16.

h100: 4 hosts x 8 H100 80GB, 80 GB per chip. Training mesh 1x4x8 (data x fsdp x tensor), 1 micro-batch of 32
  examples, 3 row(s) of 2048 per device: fp32 params 8.6 + AdamW mu,nu 17.2 + fp32 grads 8.6 + layer copies
  (bf16 gathered x2, fp32 grad) 1.1 + layer inputs under remat 8.1 + one layer's working set 2.1 + logits 0.2
  = 45.9 GB. Inference: replicas of 8 chips (1 per host), bf16 weights 17.2 per chip; augment 128 rows x 1280
  slots: KV 6.7 + first-refill copy 6.7 + prefill layer 19.5 = 50.1; curate 128 rows x 1280 slots: KV 6.7 +
  first-refill copy 6.7 + 640 shared rubric slots 0.0 + prefill layer 23.5 = 54.2; evaluate 256 rows x 1024
  slots: KV 10.7 + first-refill copy 10.7 + prefill layer 17.9 = 56.6 GB.

tpu-v4: v4-128 (64 chips, 16 hosts), 34 GB per chip. Training mesh 1x16x4 (data x fsdp x tensor), 1 micro-
  batch of 32 examples, 1 row(s) of 2048 per device: fp32 params 4.3 + AdamW mu,nu 8.6 + fp32 grads 4.3 +
  layer copies (bf16 gathered x2, fp32 grad) 2.1 + layer inputs under remat 2.7 + one layer's working set 1.1
  + logits 0.2 = 23.3 GB. Inference does not fit: a replica must live in one host (4 chips, 137 GB) and the
  bf16 weights alone are 138 GB; run backward/seed/train_t here and augment/curate_t/evaluate on tpu-v5p or
  h100 (docs/launch.md).

tpu-v5p: v5p-64 (32 chips, 8 hosts), 95 GB per chip. Training mesh 1x8x4 (data x fsdp x tensor), 1 micro-batch
  of 32 examples, 2 row(s) of 2048 per device: fp32 params 8.6 + AdamW mu,nu 17.2 + fp32 grads 8.6 + layer
  copies (bf16 gathered x2, fp32 grad) 2.1 + layer inputs under remat 5.4 + one layer's working set 2.2 +
  logits 0.3 = 44.5 GB. Inference: replicas of 4 chips (1 per host), bf16 weights 34.5 per chip; augment 64
  rows x 1280 slots: KV 6.7 + first-refill copy 6.7 + prefill layer 15.2 = 63.1; curate 64 rows x 1280 slots:
  KV 6.7 + first-refill copy 6.7 + 640 shared rubric slots 0.1 + prefill layer 19.2 = 67.2; evaluate 128 rows
  x 1024 slots: KV 10.7 + first-refill copy 10.7 + prefill layer 13.6 = 69.5 GB.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_common import Layout, base_config, pick  # noqa: E402

MODEL_PRESET = "llama2-70b"
DEFAULT_HARDWARE = "h100"
LAYOUTS = {
    "h100": Layout("h100", "4 hosts x 8 H100 80GB", chips=32, tensor=8, micro_batches=1,
                   infer_tensor=8, augment_batch=128, curate_batch=128, evaluate_batch=256),
    "tpu-v4": Layout("tpu-v4", "v4-128 (64 chips, 16 hosts)", chips=64, tensor=4, micro_batches=1,
                   infer_tensor=4, augment_batch=1, curate_batch=1, evaluate_batch=1, serves=False),
    "tpu-v5p": Layout("tpu-v5p", "v5p-64 (32 chips, 8 hosts)", chips=32, tensor=4, micro_batches=1,
                   infer_tensor=4, augment_batch=64, curate_batch=64, evaluate_batch=128),
}


def get_config(hardware: str = DEFAULT_HARDWARE):
  return base_config("llama2_70b", root="/data/humpback", layout=pick(LAYOUTS, hardware, __file__))

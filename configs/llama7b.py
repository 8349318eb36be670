"""Humpback on LLaMA-1 7B (6.7B parameters; the paper's inputs from files; see
configs/llama_common.py).

    python launch/run.py --config=configs/llama7b.py:tpu-v5p --workdir=gs://BUCKET/runs/llama7b \
        --config.inputs.seed_jsonl=... --config.inputs.segments_jsonl=... --config.inputs.base_model=...
    python tools/estimate.py --config=configs/llama7b.py:tpu-v5p     # FLOPs, bytes, hours per stage

Variants (LAYOUTS below, the `:NAME` suffix): h100 (the default), tpu-v4, tpu-v5p. One micro-batch per step
everywhere: the paper's 32 examples (~13k tokens) already fit, and splitting them only adds padded rows.

Memory per device, GB = 1e9 bytes (hb_jax.estimate.train_memory / serve_memory; tests/test_estimate.py checks
each fits in 90% of HBM). Weights 6.7B params: 27 GB fp32, 13 GB bf16; KV cache 0.52 MB per token (32 layers x
32 KV heads x 128 x K,V x bf16). Serving reads the model folder's dtype: convert with --param_dtype bfloat16.

h100: 1 host x 8 H100 80GB, 80 GB per chip. Training mesh 1x8x1 (data x fsdp x tensor), 1 micro-batch of 32
  examples, 2 row(s) of 2048 per device: fp32 params 3.4 + AdamW mu,nu 6.7 + fp32 grads 3.4 + layer copies
  (bf16 gathered x2, fp32 grad) 2.4 + layer inputs under remat 1.1 + one layer's working set 3.5 + logits 1.3
  = 21.8 GB. Inference: replicas of 4 chips (2 per host), bf16 weights 3.4 per chip; augment 128 rows x 1280
  slots: KV 21.5 + first-refill copy 21.5 + prefill layer 14.5 = 60.8; curate 128 rows x 1280 slots: KV 21.5 +
  first-refill copy 21.5 + 640 shared rubric slots 0.1 + prefill layer 18.5 = 65.0; evaluate 128 rows x 1024
  slots: KV 17.2 + first-refill copy 17.2 + prefill layer 6.5 = 44.2 GB.

tpu-v4: v4-32 (16 chips, 4 hosts), 34 GB per chip. Training mesh 1x16x1 (data x fsdp x tensor), 1 micro-batch
  of 32 examples, 1 row(s) of 2048 per device: fp32 params 1.7 + AdamW mu,nu 3.4 + fp32 grads 1.7 + layer
  copies (bf16 gathered x2, fp32 grad) 2.4 + layer inputs under remat 0.5 + one layer's working set 1.7 +
  logits 0.7 = 12.1 GB. Inference: replicas of 4 chips (1 per host), bf16 weights 3.4 per chip; augment 32
  rows x 1280 slots: KV 5.4 + first-refill copy 5.4 + prefill layer 3.6 = 17.7; curate 32 rows x 1280 slots:
  KV 5.4 + first-refill copy 5.4 + 640 shared rubric slots 0.1 + prefill layer 4.6 = 18.8; evaluate 64 rows x
  1024 slots: KV 8.6 + first-refill copy 8.6 + prefill layer 3.2 = 23.8 GB.

tpu-v5p: v5p-16 (8 chips, 2 hosts), 95 GB per chip. Training mesh 1x8x1 (data x fsdp x tensor), 1 micro-batch
  of 32 examples, 2 row(s) of 2048 per device: fp32 params 3.4 + AdamW mu,nu 6.7 + fp32 grads 3.4 + layer
  copies (bf16 gathered x2, fp32 grad) 2.4 + layer inputs under remat 1.1 + one layer's working set 3.5 +
  logits 1.3 = 21.8 GB. Inference: replicas of 4 chips (1 per host), bf16 weights 3.4 per chip; augment 128
  rows x 1280 slots: KV 21.5 + first-refill copy 21.5 + prefill layer 14.5 = 60.8; curate 128 rows x 1280
  slots: KV 21.5 + first-refill copy 21.5 + 640 shared rubric slots 0.1 + prefill layer 18.5 = 65.0; evaluate
  256 rows x 1024 slots: KV 34.4 + first-refill copy 34.4 + prefill layer 12.9 = 85.0 GB.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_common import Layout, base_config, pick  # noqa: E402

MODEL_PRESET = "llama-7b"
DEFAULT_HARDWARE = "h100"
LAYOUTS = {
    "h100": Layout("h100", "1 host x 8 H100 80GB", chips=8, tensor=1, micro_batches=1,
                   infer_tensor=4, augment_batch=256, curate_batch=256, evaluate_batch=256),
    "tpu-v4": Layout("tpu-v4", "v4-32 (16 chips, 4 hosts)", chips=16, tensor=1, micro_batches=1,
                   infer_tensor=4, augment_batch=32, curate_batch=32, evaluate_batch=64),
    "tpu-v5p": Layout("tpu-v5p", "v5p-16 (8 chips, 2 hosts)", chips=8, tensor=1, micro_batches=1,
                   infer_tensor=4, augment_batch=128, curate_batch=128, evaluate_batch=256),
}


def get_config(hardware: str = DEFAULT_HARDWARE):
  return base_config("llama7b", root="/data/humpback", layout=pick(LAYOUTS, hardware, __file__))

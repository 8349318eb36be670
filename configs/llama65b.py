"""Humpback on llama-65b (the paper's inputs from files; see configs/llama_common.py).

    python launch/run.py --config=configs/llama65b.py --workdir=gs://BUCKET/runs/llama65b \
        --config.inputs.seed_jsonl=... --config.inputs.segments_jsonl=... --config.inputs.base_model=...

Training: FSDP over every device (tensor=8 inside a host), 8 micro-batch(es) per step, full remat.
Inference: one replica per 8 devices (tensor-parallel), each process on its share of the records.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_common import base_config  # noqa: E402


def get_config():
  return base_config("llama65b", root="/data/humpback", mesh=dict(data=1, fsdp=-1, tensor=8, infer_tensor=8),
                     micro_batches=8)

"""Humpback on llama-7b (the paper's inputs from files; see configs/llama_common.py).

    python launch/run.py --config=configs/llama7b.py --workdir=gs://BUCKET/runs/llama7b \
        --config.inputs.seed_jsonl=... --config.inputs.segments_jsonl=... --config.inputs.base_model=...

Training: FSDP over every device (tensor=1 inside a host), 1 micro-batch(es) per step, full remat.
Inference: one replica per 1 devices (tensor-parallel), each process on its share of the records.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_common import base_config  # noqa: E402


def get_config():
  return base_config("llama7b", root="/data/humpback", mesh=dict(data=1, fsdp=-1, tensor=1, infer_tensor=1),
                     micro_batches=1)

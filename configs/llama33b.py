"""Humpback on llama-33b (the paper's inputs from files; see configs/llama_common.py).

    python launch/run.py --config=configs/llama33b.py --workdir=gs://BUCKET/runs/llama33b \
        --config.inputs.seed_jsonl=... --config.inputs.segments_jsonl=... --config.inputs.base_model=...

Training: FSDP over every device (tensor=4 inside a host), 4 micro-batch(es) per step, full remat.
Inference: one replica per 4 devices (tensor-parallel), each process on its share of the records.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_common import base_config  # noqa: E402


def get_config():
  return base_config("llama33b", root="/data/humpback", mesh=dict(data=1, fsdp=-1, tensor=4, infer_tensor=4),
                     micro_batches=4)

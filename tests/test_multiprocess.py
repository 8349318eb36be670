"""Two JAX processes x 4 CPU devices (gloo collectives) give the logits of one process x 8 devices."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import portpicker
import pytest

from helpers import convert_hf, make_hf_llama, random_tokens
from hb_jax import api
from hb_jax.config import MeshConfig
from hb_jax.parallel import make_mesh

WORKER = pathlib.Path(__file__).with_name("mp_logits_worker.py")


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  _, hf_dir = make_hf_llama(tmp_path, num_key_value_heads=2, vocab_size=64)
  model_dir = convert_hf(hf_dir, tmp_path / "ours")
  tokens = random_tokens(64, 4, 16, seed=5)
  np.save(tmp_path / "tokens.npy", tokens)
  single = api.load(model_dir, mesh=make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))).logits(tokens)

  port = portpicker.pick_unused_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), "2", str(port), str(model_dir),
                             str(tmp_path / "tokens.npy"), str(tmp_path / "out.npy")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=240)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  multi = np.load(tmp_path / "out.npy")
  assert np.max(np.abs(multi - single)) <= 1e-5 * np.max(np.abs(single))

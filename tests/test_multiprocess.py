"""Two JAX processes x 4 CPU devices (gloo collectives) give the logits, and finetune to the parameters, of one
process x 8 devices; their training checkpoint resumes on one process."""
from __future__ import annotations

import os
import pathlib
import shutil
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
FINETUNE_WORKER = pathlib.Path(__file__).with_name("mp_finetune_worker.py")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _launch(worker, port, *args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  procs = [subprocess.Popen([sys.executable, str(worker), str(i), "2", str(port), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  _, hf_dir = make_hf_llama(tmp_path, num_key_value_heads=2, vocab_size=64)
  model_dir = convert_hf(hf_dir, tmp_path / "ours")
  tokens = random_tokens(64, 4, 16, seed=5)
  np.save(tmp_path / "tokens.npy", tokens)
  single = api.load(model_dir, mesh=make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))).logits(tokens)

  _launch(WORKER, portpicker.pick_unused_port(), model_dir, tmp_path / "tokens.npy", tmp_path / "out.npy")
  multi = np.load(tmp_path / "out.npy")
  assert np.max(np.abs(multi - single)) <= 1e-5 * np.max(np.abs(single))


@pytest.mark.slow
def test_two_processes_finetune_like_one_and_resume_on_one(tmp_path):
  """Per-process data shards, the sharded step over gloo, Orbax step checkpoints and the final model folder,
  written by two processes: the same parameters as one process (up to the collectives' summation order).
  Then a job resized after preemption: one process x 8 devices resumes the two processes' step-2 checkpoint
  (grain keeps one iterator state per process and restored only the current layout's, so this failed inside
  grain; the other direction is the same code path, tests/train/test_train_resume.py). Orbax reshards the
  state and the data is placed at the restored step, whose examples do not depend on the layout: the
  parameters are again those of the uninterrupted single process."""
  import json

  import jax

  from hb_jax import model_folder
  from hb_jax.train import finetune

  from tests.mp_train_config import TRAIN

  _, hf_dir = make_hf_llama(tmp_path, num_key_value_heads=2, vocab_size=64)
  base = convert_hf(hf_dir, tmp_path / "base")
  rng = np.random.default_rng(3)
  rows = [{"prompt_tokens": [1] + rng.integers(3, 64, 6).tolist(), "response_tokens": rng.integers(3, 64, 7).tolist()
           + [2]} for _ in range(20)]
  train_jsonl = tmp_path / "train.jsonl"
  train_jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
  one = finetune.finetune(TRAIN, base, train_jsonl, tmp_path / "one", tmp_path / "work_one")
  assert one.completed and one.step == TRAIN.num_steps and one.resumed_from is None
  _launch(FINETUNE_WORKER, portpicker.pick_unused_port(), base, train_jsonl, tmp_path / "two", tmp_path / "work_two")
  assert model_folder.is_model_folder(tmp_path / "two")
  # The two processes' run as preemption left it after step 2: its later checkpoint and model folder gone.
  resized = tmp_path / "work_resized"
  shutil.copytree(tmp_path / "work_two", resized)
  steps = sorted(int(p.name) for p in (resized / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [2, 4], steps
  shutil.rmtree(resized / "checkpoints" / "4")
  end = finetune.finetune(TRAIN, base, train_jsonl, tmp_path / "resized", resized)
  assert (end.completed, end.step, end.resumed_from) == (True, TRAIN.num_steps, 2)

  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  cfg = model_folder.read_model_config(tmp_path / "one")
  a = model_folder.restore_params(tmp_path / "one", cfg, mesh)
  start = model_folder.restore_params(base, cfg, mesh)
  tol = dict(rtol=1e-4, atol=1e-5)
  for other in ("two", "resized"):
    b = model_folder.restore_params(tmp_path / other, cfg, mesh)
    for (path, x), y, x0 in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), jax.tree.leaves(start)):
      x, y, x0 = map(np.asarray, (x, y, x0))
      # Adam turns summation-order noise in near-zero gradients into ~1e-6 differences; training moved >1e-3.
      np.testing.assert_allclose(y, x, **tol, err_msg=f"{other} {path}")
  # The tolerance tells trained from untrained parameters apart: four steps moved them well past it.
  assert not all(np.allclose(np.asarray(x), np.asarray(x0), **tol) for x, x0 in zip(jax.tree.leaves(a), jax.tree.leaves(start)))

"""Kill -9 at any step, then rerun: training ends bit-identical to an uninterrupted run. SIGTERM: the run
checkpoints, exits cleanly, and a rerun finishes it (same bits again). A checkpoint of another process count
resumes: the data is placed at the restored step."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")


def _start(workdir, sleep):
  cache = os.path.join(os.path.dirname(workdir), "xla_cache")
  return subprocess.Popen([sys.executable, WORKER, str(workdir), str(sleep), cache], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_for_step(proc, workdir, step, timeout=240):
  """Blocks until metrics.jsonl shows a logged training step >= `step`."""
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"worker exited early ({proc.returncode}):\n{proc.stdout.read()}")
    if os.path.exists(path):
      with open(path) as f:
        steps = [json.loads(l)["step"] for l in f if '"loss"' in l]
      if steps and max(steps) >= step:
        return
    time.sleep(0.02)
  raise AssertionError(f"step {step} not reached in {timeout}s")


def _finish(proc):
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  return out


def _load(workdir):
  with np.load(os.path.join(workdir, "final.npz")) as f:
    return {k: f[k] for k in f.files}


@pytest.mark.slow
def test_kill9_and_sigterm_resume_bit_exact(tmp_path):
  ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
  ref = _start(ref_dir, 0.0)
  assert "completed=True step=16" in _finish(ref)

  # kill -9 between checkpoints (they are written every 3 steps): the rerun redoes the lost steps.
  proc = _start(run_dir, 0.15)
  _wait_for_step(proc, run_dir, 5)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (run_dir / "final.npz").exists()

  # SIGTERM: checkpoint at the agreed step, clean exit, no final params.
  proc = _start(run_dir, 0.15)
  _wait_for_step(proc, run_dir, 8)
  proc.send_signal(signal.SIGTERM)
  out = _finish(proc)
  # Killed around step 5: the last complete checkpoint is step 3 (6 if the kill came late).
  assert "completed=False" in out and ("resumed_from=3" in out or "resumed_from=6" in out), out
  assert not (run_dir / "final.npz").exists()

  out = _finish(_start(run_dir, 0.0))
  assert "completed=True step=16" in out and "resumed_from=None" not in out, out
  want, got = _load(ref_dir), _load(run_dir)
  assert want.keys() == got.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)

  rows = [json.loads(l) for l in open(run_dir / "metrics.jsonl")]
  assert any(r.get("event") == "preempted" for r in rows)
  assert any("val_loss" in r for r in rows)


def _small_run(workdir, steps: int):
  """A TrainCheckpointer (None without a workdir), TrainData and a small TrainState (no model: nothing to
  compile) after `steps` steps."""
  import jax.numpy as jnp

  from hb_jax.config import MeshConfig
  from hb_jax.data import loader
  from hb_jax.parallel import make_mesh
  from hb_jax.train import checkpointing, step as step_lib

  from .common import random_examples

  exs = random_examples(12, seed=6)
  mesh = make_mesh(MeshConfig(2, 2, 2))
  plan = loader.plan_batches([loader.num_slots(e) for e in exs], batch_size=4, micro_batches=1, seq_len=32,
                             packed=True, num_steps=8, seed=2, mesh=mesh)
  data = loader.TrainData(exs, plan, seed=2, mesh=mesh)
  for _ in range(steps):
    data.next_local()
  state = step_lib.TrainState(params={"w": jnp.arange(8.0) + steps}, opt_state={"mu": jnp.ones(8)},
                              step=jnp.asarray(steps, jnp.int32), rng=jax.random.key_data(jax.random.key(0)))
  ckpt = workdir and checkpointing.TrainCheckpointer(workdir, save_every=0, keep=2, async_save=False)
  return ckpt, data, state


def test_a_checkpoint_of_another_process_count_resumes_at_its_step(tmp_path):
  """Grain saves the data iterator per process (data/process_<i>-of-<n>.json) and restores only the file of
  the current layout, so a job resized after preemption failed inside grain ("File .../process_0-of-1.json
  does not exist."). The data position is the restored step instead: the examples of a step do not depend on
  the process count. The real 2 -> 1 process resume is
  tests/test_multiprocess.py::test_two_processes_finetune_like_one_and_resume_on_one."""
  import shutil

  ckpt, data, state = _small_run(tmp_path / "ckpt", 5)  # past the first epoch (3 steps)
  assert ckpt.save(5, state, data.iterator, force=True)
  ckpt.close()
  want = [data.next_local() for _ in range(2)]
  files = tmp_path / "ckpt" / "5" / "data"
  for i in range(2):  # as if written by 2 processes
    shutil.copy(files / "process_0-of-1.json", files / f"process_{i}-of-2.json")
  (files / "process_0-of-1.json").unlink()

  ckpt, fresh, init = _small_run(tmp_path / "ckpt", 0)
  try:
    assert ckpt.latest_step() == 5 and ckpt.saved_process_count(5) == 2
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), init)
    restored = ckpt.restore(5, abstract, fresh.iterator)
  finally:
    ckpt.close()
  np.testing.assert_array_equal(np.asarray(restored.params["w"]), np.arange(8.0) + 5)
  assert int(restored.step) == 5 and fresh.iterator.get_state() == {"next_index": 5}
  for w in want:
    got = fresh.next_local()
    for k in w:
      np.testing.assert_array_equal(got[k], w[k])


def test_seek_data_equals_stepping_and_refuses_other_iterators():
  from hb_jax.train import checkpointing

  _, a, _ = _small_run(None, 5)
  _, b, _ = _small_run(None, 0)
  checkpointing.seek_data(b.iterator, 5)
  for _ in range(2):
    want, got = a.next_local(), b.next_local()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])

  class Other:
    def get_state(self):
      return b"a DataLoader state"

  with pytest.raises(TypeError, match="expected a grain MapDataset iterator"):
    checkpointing.seek_data(Other(), 1)

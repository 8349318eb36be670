"""Kill -9 at any step, then rerun: training ends bit-identical to an uninterrupted run. SIGTERM: the run
checkpoints, exits cleanly, and a rerun finishes it (same bits again)."""
import json
import os
import signal
import subprocess
import sys
import time

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

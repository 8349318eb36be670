"""Worker for test_multiprocess: one of N JAX processes (8 // N CPU devices each) training the tiny model of
tests/train/common.py in a shared workdir, stopping (as if preempted) after step `stop_at` (0: run to the end).

argv: process_id num_processes port work_dir stop_at
"""
import os
import sys

NPROC = int(sys.argv[2])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // NPROC}"
os.environ["JAX_PLATFORMS"] = "cpu"


def main():
  pid, nproc, port, work_dir, stop_at = sys.argv[1:]
  from hb_jax.parallel import DistributedConfig, initialize_distributed

  if int(nproc) > 1:
    assert initialize_distributed(DistributedConfig(coordinator_address=f"127.0.0.1:{port}",
                                                    num_processes=int(nproc), process_id=int(pid)))
  import jax

  from tests.mp_train_config import resume_run

  assert jax.process_count() == int(nproc) and jax.device_count() == 8
  result = resume_run(work_dir, int(stop_at))
  print(f"RESULT completed={result.completed} step={result.step} resumed_from={result.resumed_from}", flush=True)
  if int(nproc) > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()

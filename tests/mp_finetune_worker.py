"""Worker for test_multiprocess: one of N JAX processes finetuning a model on a mesh spanning all of them.

argv: process_id num_processes port base_dir train.jsonl out_dir work_dir
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"


def main():
  pid, nproc, port, base_dir, train_jsonl, out_dir, work_dir = sys.argv[1:]
  from hb_jax.parallel import DistributedConfig, initialize_distributed

  multi = initialize_distributed(DistributedConfig(coordinator_address=f"127.0.0.1:{port}",
                                                   num_processes=int(nproc), process_id=int(pid)))
  import jax

  from hb_jax.train import finetune
  from tests.mp_train_config import TRAIN

  assert multi and jax.device_count() == 4 * int(nproc)
  res = finetune.finetune(TRAIN, base_dir, train_jsonl, out_dir, work_dir)
  assert res.completed and res.step == TRAIN.num_steps, res
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()

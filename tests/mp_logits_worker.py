"""Worker for test_multiprocess: one of N JAX processes computing logits on a mesh spanning all of them.

argv: process_id num_processes port model_dir tokens.npy out.npy
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"


def main():
  pid, nproc, port, model_dir, tokens_path, out_path = sys.argv[1:]
  import numpy as np

  from hb_jax import api
  from hb_jax.config import MeshConfig
  from hb_jax.parallel import DistributedConfig, initialize_distributed, make_mesh

  multi = initialize_distributed(DistributedConfig(coordinator_address=f"127.0.0.1:{port}",
                                                   num_processes=int(nproc), process_id=int(pid)))
  import jax

  assert multi and jax.process_count() == int(nproc) and jax.device_count() == 4 * int(nproc)
  lm = api.load(model_dir, mesh=make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)))
  logits = lm.logits(np.load(tokens_path))
  if int(pid) == 0:
    np.save(out_path, logits)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()

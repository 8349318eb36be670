"""Subprocess for test_train_resume: trains the tiny model in a workdir, sleeping a little per step so the
parent can kill it mid-run; on completion writes the final params to <workdir>/final.npz."""
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from hb_jax.config import MeshConfig  # noqa: E402
from hb_jax.data import loader  # noqa: E402
from hb_jax.parallel import make_mesh  # noqa: E402
from hb_jax.train import loop  # noqa: E402
from train.common import TINY, random_examples, tiny_train_config  # noqa: E402

NUM_STEPS = 16


def main(workdir: str, sleep: float, cache_dir: str) -> int:
  # The runs share one persistent compilation cache: only the first compiles (and all run one executable).
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  cfg = dataclasses.replace(TINY, dropout_rate=0.1)
  tc = tiny_train_config(dropout_rate=0.1, checkpoint_every=3, keep_checkpoints=2, batch_size=4,
                         micro_batches=2)
  exs, _ = loader.prepare_examples(random_examples(10, seed=21), tc.seq_len)
  mesh = make_mesh(MeshConfig(2, 2, 2))
  result = loop.train(cfg, tc, mesh, exs, workdir, val_examples=exs[:3], num_steps=NUM_STEPS,
                      on_step=lambda step, m: time.sleep(sleep))
  print(f"RESULT completed={result.completed} step={result.step} resumed_from={result.resumed_from}",
        flush=True)
  if result.completed:
    flat = {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(jax.device_get(result.state.params))}
    np.savez(os.path.join(workdir, "final.npz"), **flat)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1], float(sys.argv[2]), sys.argv[3]))

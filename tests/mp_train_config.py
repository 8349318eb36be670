"""The finetuning run test_multiprocess does on 1 process x 8 devices and on 2 processes x 4 devices, and
(`resume_run`) the tiny training run it stops and resumes across those two layouts.

Dropout is off: each process packs its share of a step's examples into its own rows, so with dropout the
masks (drawn per row position) would differ between the two layouts, while the examples of every step
are the same."""
from hb_jax.config import MeshConfig, TrainConfig

TRAIN = TrainConfig(num_steps=4, batch_size=8, seq_len=32, learning_rate=1e-3, end_learning_rate=9e-4,
                    dropout_rate=0.0, checkpoint_every=2, log_every=2, progress_bar=False, async_checkpointing=False,
                    mesh=MeshConfig(data=2, fsdp=2, tensor=2))


class StopAt:
  """A preemption watcher that asks every process to stop after step `stop_at` (0: never)."""

  def __init__(self, stop_at: int):
    self.stop_at = stop_at

  def should_stop(self, step: int) -> bool:
    return bool(self.stop_at) and step >= self.stop_at


def resume_run(workdir, stop_at: int = 0):
  """The tiny model of tests/train/common.py trained 6 steps on a 2 x 2 x 2 mesh, checkpointing every 2 steps;
  stopped (checkpointed, as if preempted) after step `stop_at`. One process x 8 devices or two x 4."""
  from hb_jax.config import MeshConfig
  from hb_jax.data import loader
  from hb_jax.parallel import make_mesh
  from hb_jax.train import loop
  from tests.train.common import TINY, random_examples, tiny_train_config

  tc = tiny_train_config(batch_size=8, micro_batches=2, checkpoint_every=2, keep_checkpoints=2, log_every=2,
                         async_checkpointing=False)
  exs, _ = loader.prepare_examples(random_examples(20, seed=7), tc.seq_len)
  return loop.train(TINY, tc, make_mesh(MeshConfig(2, 2, 2)), exs, workdir, val_examples=exs[:4], num_steps=6,
                    watcher=StopAt(stop_at))

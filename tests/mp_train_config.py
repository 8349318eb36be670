"""The finetuning run test_multiprocess does on 1 process x 8 devices and on 2 processes x 4 devices, and
resumes from the two processes' checkpoint on one.

Dropout is off: each process packs its share of a step's examples into its own rows, so with dropout the
masks (drawn per row position) would differ between the two layouts, while the examples of every step
are the same."""
from hb_jax.config import MeshConfig, TrainConfig

TRAIN = TrainConfig(num_steps=4, batch_size=8, seq_len=32, learning_rate=1e-3, end_learning_rate=9e-4,
                    dropout_rate=0.0, checkpoint_every=2, log_every=2, progress_bar=False, async_checkpointing=False,
                    mesh=MeshConfig(data=2, fsdp=2, tensor=2))

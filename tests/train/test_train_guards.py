"""What train() refuses or reports: another run's checkpoints, token ids outside the vocabulary, a warmup
longer than the run, examples with nothing to learn from; the first step's metrics; no unasked checkpoint."""
import json
import os

import numpy as np
import pytest

from hb_jax.config import ConfigError, MeshConfig, TrainConfig
from hb_jax.data import loader
from hb_jax.parallel import make_mesh
from hb_jax.train import loop

from .common import TINY, random_examples

TC = TrainConfig(num_steps=3, batch_size=4, seq_len=32, checkpoint_every=2, keep_checkpoints=5, log_every=1,
                 dropout_rate=0.0, progress_bar=False, async_checkpointing=False)


def test_a_workdir_resumes_only_its_own_run(tmp_path):
  mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
  res = loop.train(TINY, TC, mesh, random_examples(12, seed=0), tmp_path)
  assert res.completed and res.last_metrics["loss"] > 0
  # Only the configured saves (step 2) and the end (step 3): no checkpoint of step 1.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in logged if "loss" in m and "event" not in m] == [1, 2, 3]  # step 1 too
  # The same run again is finished; another run's data or settings are refused, not continued.
  assert loop.train(TINY, TC, mesh, random_examples(12, seed=0), tmp_path).resumed_from == 3
  with pytest.raises(RuntimeError, match=r"holds checkpoints of another run \(differs in \['examples_sha1'\]\)"):
    loop.train(TINY, TC, mesh, random_examples(12, seed=1), tmp_path)
  with pytest.raises(RuntimeError, match=r"differs in \['train.learning_rate'\]"):
    loop.train(TINY, TrainConfig(**{**TC.__dict__, "learning_rate": 1e-3}), mesh, random_examples(12, seed=0), tmp_path)
  with pytest.raises(RuntimeError, match="past this run's 2 steps"):
    loop.train(TINY, TrainConfig(**{**TC.__dict__, "num_steps": 2}), mesh, random_examples(12, seed=0), tmp_path)


def test_bad_ids_warmup_and_empty_examples(tmp_path):
  mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
  bad = random_examples(6) + [loader.example([1, 2], [3, TINY.vocab_size])]
  with pytest.raises(ValueError, match=rf"training example 6: response token ids must be in \[0, {TINY.vocab_size}\)"):
    loop.train(TINY, TC, mesh, bad, tmp_path / "a")
  with pytest.raises(ConfigError, match=r"warmup_steps \(3\) must be below the number of steps \(3\)"):
    loop.train(TINY, TrainConfig(**{**TC.__dict__, "warmup_steps": 3}), mesh, random_examples(6), tmp_path / "b")
  kept, stats = loader.prepare_examples([([], [5]), ([1], [5]), ([1], [])], seq_len=8)
  assert len(kept) == 1 and stats.dropped_empty == 2  # one token alone has no input to predict it from

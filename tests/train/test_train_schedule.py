"""The paper's optimizer settings: lr 1e-5 -> 9e-6 at the last step, batch 32 (8 below 3,000), steps."""
import numpy as np
import pytest

from hb_jax.config import ConfigError, TrainConfig
from hb_jax.train import step as step_lib


def test_schedule_first_and_last_step_are_the_papers():
  tc = TrainConfig()
  for steps in (500, 600, 1600):
    sched = step_lib.lr_schedule(tc, steps)
    assert float(sched(0)) == pytest.approx(1e-5, rel=1e-6)
    assert float(sched(steps - 1)) == pytest.approx(9e-6, rel=1e-6)
    mid = float(sched((steps - 1) // 2))
    assert 9e-6 < mid < 1e-5


def test_warmup_then_decay():
  sched = step_lib.lr_schedule(TrainConfig(warmup_steps=10), 100)
  assert float(sched(0)) == 0.0
  assert float(sched(10)) == pytest.approx(1e-5, rel=1e-6)
  assert float(sched(99)) == pytest.approx(9e-6, rel=1e-6)


def test_paper_batch_and_step_rules():
  tc = TrainConfig()
  assert tc.examples_per_step(2999) == 8 and tc.examples_per_step(3200) == 32
  assert [tc.steps_for(n) for n in (3200, 6400, 12800, 25600, 51200)] == [500, 600, 600, 1200, 1600]
  assert tc.dropout_rate == 0.1 and tc.weight_decay == 0.1
  assert TrainConfig(num_epochs=2, batch_size=10).steps_for(95) == 19
  with pytest.raises(ConfigError, match="train.overlong"):
    TrainConfig(overlong="wrap")


def test_weight_decay_skips_norms():
  mask = step_lib._decay_mask({"norm": {"weight": 0}, "layers": {"input_layernorm": {"weight": 0},
                                                                  "mlp": {"up_proj": {"kernel": 0}}}})
  assert mask == {"norm": {"weight": False}, "layers": {"input_layernorm": {"weight": False},
                                                        "mlp": {"up_proj": {"kernel": True}}}}

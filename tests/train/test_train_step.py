"""The jitted train step: memorisation, accumulation == one big batch, sharded == single device."""
import dataclasses
import functools

import jax
import numpy as np
import pytest

from hb_jax.config import MeshConfig
from hb_jax.data import loader
from hb_jax.parallel import make_mesh, single_device_mesh
from hb_jax.train import step as step_lib

from .common import TINY, random_examples, tiny_model, tiny_train_config


def _run(cfg, tc, mesh, batches, steps=None):
  """Trains from tiny_model(0)'s params on `mesh` over host batches; returns (params, [metrics])."""
  _, params = tiny_model(0)
  tx, sched = step_lib.make_optimizer(tc, len(batches))
  state = step_lib.init_state(cfg, tx, mesh, params=jax.device_get(params), seed=tc.seed)
  fn = step_lib.jit_train_step(cfg, tx, sched, mesh)
  out = []
  with jax.set_mesh(mesh):
    for b in batches:
      state, m = fn(state, loader.global_batch(b, mesh))
      out.append(jax.device_get(m))
  return jax.device_get(state.params), out


def _batches(n_steps, examples_per_step, micro, rows, seed=0):
  exs, _ = loader.prepare_examples(random_examples(n_steps * examples_per_step, seed=seed), 32)
  return [loader.pack_micro_batches(exs[i * examples_per_step:(i + 1) * examples_per_step], micro, rows, 32,
                                    True) for i in range(n_steps)]


def _assert_updates_close(a, b, rtol=1e-5):
  """Per tensor, the two runs' parameter updates (from tiny_model(0)) agree within rtol of the update's
  norm. (Elementwise, Adam's m / sqrt(v) turns a 1e-7 gradient difference on a near-zero gradient into
  an O(lr) change of that one element, so an elementwise tolerance would test Adam, not the step.)"""
  init = jax.device_get(tiny_model(0)[1])
  for (path, x), y, x0 in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), jax.tree.leaves(init)):
    x, y, x0 = (np.asarray(v, np.float64) for v in (x, y, x0))
    err = np.linalg.norm(x - y) / np.linalg.norm(x - x0)
    assert err < rtol, f"{jax.tree_util.keystr(path)}: relative update difference {err:.2e}"


def test_memorisation_drives_loss_near_zero():
  tc = tiny_train_config(learning_rate=1e-2, end_learning_rate=1e-2, weight_decay=0.0, grad_clip_norm=0.0)
  batch = _batches(1, 4, 1, 2, seed=11)[0]
  params, metrics = _run(TINY, tc, single_device_mesh(), [batch] * 120)
  losses = [float(m["loss"]) for m in metrics]
  assert losses[0] > 3.0, losses[0]
  assert losses[-1] < 0.05, losses[-5:]


def test_accumulation_equals_one_big_batch():
  tc = tiny_train_config()
  exs, _ = loader.prepare_examples(random_examples(16, seed=12), 32)
  whole = [loader.pack_micro_batches(exs[i * 8:(i + 1) * 8], 1, 8, 32, True) for i in range(2)]
  parts = [loader.pack_micro_batches(exs[i * 8:(i + 1) * 8], 4, 4, 32, True) for i in range(2)]
  assert parts[0]["inputs"].shape == (4, 4, 32)
  p1, m1 = _run(TINY, tc, single_device_mesh(), whole)
  p4, m4 = _run(TINY, tc, single_device_mesh(), parts)
  for a, b in zip(m1, m4):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
    assert a["loss_tokens"] == b["loss_tokens"]
  _assert_updates_close(p1, p4)


_DROPOUT_CFG = dataclasses.replace(TINY, dropout_rate=0.1)
# Adam's first steps are ~lr * sign(g): a gradient that is ~0 up to rounding gets an O(lr) update of either
# sign. A larger eps keeps the update linear in such gradients, so comparing updates tests the step.
_TC = tiny_train_config(dropout_rate=0.1, adam_eps=1e-4)


@functools.lru_cache(maxsize=None)
def _reference(micro):
  return _run(_DROPOUT_CFG, _TC, single_device_mesh(),
              _batches(2, 8, micro, 8, seed=13))


@pytest.mark.parametrize("shape,micro", [
    ((2, 2, 2), 2),
    ((1, 8, 1), 1),
    pytest.param((1, 2, 4), 1, marks=pytest.mark.slow),
    pytest.param((8, 1, 1), 1, marks=pytest.mark.slow),
])
def test_sharded_step_equals_single_device(shape, micro):
  # Dropout on: keys are sharding-invariant, so even the dropout masks must agree.
  ref_params, ref_m = _reference(micro)
  mesh = make_mesh(MeshConfig(*shape))
  params, m = _run(_DROPOUT_CFG, _TC, mesh, _batches(2, 8, micro, 8, seed=13))
  for a, b in zip(ref_m, m):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
  _assert_updates_close(ref_params, params)


@pytest.mark.slow
def test_remat_policies_give_the_same_step():
  # Against the single-device reference (remat none, dropout on; shared with the sharded tests): full remat
  # recomputes the forward in the backward pass, dropout masks included.
  assert _DROPOUT_CFG.remat == "none"
  _, none = _reference(1)
  _, full = _run(dataclasses.replace(_DROPOUT_CFG, remat="full"), _TC, single_device_mesh(),
                 _batches(2, 8, 1, 8, seed=13))
  np.testing.assert_allclose(full[0]["loss"], none[0]["loss"], rtol=1e-6)
  np.testing.assert_allclose(full[0]["grad_norm"], none[0]["grad_norm"], rtol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 2, 2)])
def test_chunked_loss_gives_the_plain_step(shape):
  # ModelConfig.loss_chunk computes the head and its gradients chunk by chunk (hb_jax/train/fused_loss.py);
  # 5 does not divide the 32-token rows, so padding is exercised too. Dropout on, as in the sharded test.
  ref_params, ref_m = _reference(1)
  cfg = dataclasses.replace(_DROPOUT_CFG, loss_chunk=5)
  mesh = single_device_mesh() if shape == (1, 1, 1) else make_mesh(MeshConfig(*shape))
  params, m = _run(cfg, _TC, mesh, _batches(2, 8, 1, 8, seed=13))
  for a, b in zip(ref_m, m):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
  _assert_updates_close(ref_params, params)

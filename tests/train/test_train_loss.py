"""Masked loss: packed == padded per token, prompt targets never reach the gradients."""
import jax
import jax.numpy as jnp
import numpy as np

from hb_jax.data import loader
from hb_jax.train import step as step_lib

from .common import random_examples, tiny_model


_nll = jax.jit(step_lib.per_token_nll, static_argnums=0)
_sums = jax.jit(lambda g, p, b: step_lib.loss_sums(g, p, b, None), static_argnums=0)


def _setup():
  return tiny_model(0)


def test_packed_equals_padded_per_token():
  graphdef, params = _setup()
  exs, _ = loader.prepare_examples(random_examples(6, seed=7), 32)
  packed = loader.pack(exs, num_rows=3, seq_len=32, packed=True)
  padded = loader.pack(exs, num_rows=6, seq_len=32, packed=False)
  assert int((packed["segment_ids"] > 0).any(axis=1).sum()) < 6  # really packed
  nll_p = np.asarray(_nll(graphdef, params, packed))
  nll_u = np.asarray(_nll(graphdef, params, padded))
  # Row assignment is deterministic: rebuild each example's slots in both layouts and compare.
  rows = loader.assign_rows([loader.num_slots(e) for e in exs], 32, True)
  fill = [0] * 3
  for i, e in enumerate(exs):
    n = loader.num_slots(e)
    got = nll_p[rows[i], fill[rows[i]]:fill[rows[i]] + n]
    fill[rows[i]] += n
    np.testing.assert_allclose(got, nll_u[i, :n], rtol=1e-5, atol=1e-5)
  # And the batch losses agree.
  sums = [_sums(graphdef, params, b) for b in (packed, padded)]
  np.testing.assert_allclose(float(sums[0][0]), float(sums[1][0]), rtol=1e-5)
  assert float(sums[0][1]) == float(sums[1][1]) == sum(len(e["response"]) for e in exs)


def test_prompt_targets_do_not_change_gradients():
  graphdef, params = _setup()
  exs, _ = loader.prepare_examples(random_examples(4, seed=8), 32)
  batch = loader.pack(exs, num_rows=2, seq_len=32)
  other = dict(batch)
  prompt_slots = (batch["loss_mask"] == 0)
  other["targets"] = np.where(prompt_slots, (batch["targets"] + 17) % 128, batch["targets"])
  assert (other["targets"] != batch["targets"]).any()

  def grads(b):
    return _grad(params, b)

  _grad = jax.jit(jax.grad(lambda p, b: step_lib.loss_sums(graphdef, p, b, None)[0]))

  g1, g2 = grads(batch), grads(other)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # ...while a response target does change them (the test can fail).
  third = dict(batch)
  resp = np.argwhere(batch["loss_mask"] > 0)[0]
  third["targets"] = batch["targets"].copy()
  third["targets"][tuple(resp)] = (third["targets"][tuple(resp)] + 1) % 128
  g3 = grads(third)
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g3)))


def test_token_nll_matches_log_softmax():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 11)) * 4
  targets = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 0, 11)
  want = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(step_lib.token_nll(logits, targets), want, rtol=1e-6, atol=1e-6)

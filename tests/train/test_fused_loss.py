"""The chunked head + loss (hb_jax/train/fused_loss.py) against the plain logits path: value and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hb_jax.train import fused_loss
from hb_jax.train.step import token_nll


def _plain(h, w, targets, weights):
  logits = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
  return jnp.sum(token_nll(logits, targets) * weights)


def _inputs(b=3, t=20, d=16, v=96, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  h = jax.random.normal(k[0], (b, t, d))
  w = jax.random.normal(k[1], (d, v)) * 0.3
  targets = jax.random.randint(k[2], (b, t), 0, v)
  weights = (jax.random.uniform(k[3], (b, t)) < 0.6).astype(jnp.float32)  # a loss mask with holes
  return h, w, targets, weights


@pytest.mark.parametrize("chunk", [1, 4, 7, 20, 64])  # 7 pads 20 -> 21; 64 is larger than T
def test_value_and_gradients_match_the_plain_path(chunk):
  h, w, targets, weights = _inputs()
  ref, (ref_dh, ref_dw) = jax.value_and_grad(_plain, argnums=(0, 1))(h, w, targets, weights)
  fused = lambda h, w: fused_loss.weighted_nll_sum(h, w, targets, weights, chunk)
  val, (dh, dw) = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(h, w)
  np.testing.assert_allclose(val, ref, rtol=1e-6)
  np.testing.assert_allclose(dh, ref_dh, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-6)
  # Undifferentiated (evaluation) it runs the forward chunks only and gives the same value.
  np.testing.assert_allclose(jax.jit(fused)(h, w), ref, rtol=1e-6)


def test_masked_positions_contribute_nothing_and_cotangents_scale():
  h, w, targets, weights = _inputs(seed=1)
  f = lambda h, w, m: 3.0 * fused_loss.weighted_nll_sum(h, w, targets, m, 8)
  g = jax.grad(f, argnums=(0, 1))
  dh, dw = g(h, w, weights)
  assert np.all(np.asarray(dh)[np.asarray(weights) == 0] == 0)
  ref_dh, ref_dw = jax.grad(lambda h, w: 3.0 * _plain(h, w, targets, weights), argnums=(0, 1))(h, w)
  np.testing.assert_allclose(dh, ref_dh, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-6)

"""The output head and the token loss in one pass over chunks of positions, gradients included.

    loss = sum_{b,t} m[b,t] * (logsumexp_v(h[b,t] . W[:, v]) - h[b,t] . W[:, y[b,t]])

The plain path builds the logits [B, T, V] in float32 (8 GiB for 32 rows of 2,048 tokens and a 32,000-piece
vocabulary) and walks them several times: log-softmax forward, softmax backward, two gradient matmuls.
Here the positions go through in chunks of `chunk` along T. The loss is a scalar at the end of the graph,
so each chunk's gradients can be taken right away, while its logits are still in cache:

    G = m * (softmax(h W) - onehot(y))          [B, c, V], never all chunks at once
    dL/dh = G W^T          dL/dW = sum over chunks of h^T G

and the backward pass only scales them by the incoming cotangent. The matmuls are the plain path's three;
what goes away is the traffic over the full logits (on a 2-core CPU, 1.56 s -> 1.13 s for the 58M bench
model's head on 8 x 256 tokens). Without differentiation (evaluation) only the forward chunks run.

On a multi-device mesh, dW is summed over the batch shards once per chunk instead of once per step, so keep
chunks large there (hb_jax.config.ModelConfig.loss_chunk).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def _chunked(x: Array, chunk: int) -> Array:
  """[B, T, ...] -> [T / chunk, B, chunk, ...] (T a multiple of chunk)."""
  b, t = x.shape[:2]
  return jnp.moveaxis(x.reshape(b, t // chunk, chunk, *x.shape[2:]), 1, 0)


def _chunk_nll(h: Array, w: Array, targets: Array) -> tuple[Array, Array, Array]:
  """(float32 logits, logsumexp, NLL) of one chunk."""
  logits = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return logits, lse, lse - picked


def _pad_to_chunks(h, targets, weights, chunk):
  t = h.shape[1]
  chunk = min(chunk, t)
  pad = -t % chunk
  if pad:  # padded positions carry weight 0, so they add nothing to the loss or the gradients
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    weights = jnp.pad(weights, ((0, 0), (0, pad)))
  return h, targets, weights, chunk


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def weighted_nll_sum(h: Array, w: Array, targets: Array, weights: Array, chunk: int) -> Array:
  """sum(weights * NLL) of the head `w` [d, V] over hidden states `h` [B, T, d], `chunk` positions at a time.

  targets: int [B, T]; weights: float [B, T] (the loss mask). Gradients flow to h and w only.
  """
  h, targets, weights, chunk = _pad_to_chunks(h, targets, weights.astype(jnp.float32), chunk)

  def body(total, xs):
    hc, yc, mc = xs
    _, _, nll = _chunk_nll(hc, w, yc)
    return total + jnp.sum(nll * mc), None

  xs = (_chunked(h, chunk), _chunked(targets, chunk), _chunked(weights, chunk))
  return jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)[0]


def _forward_with_grads(h, w, targets, weights, chunk):
  t = h.shape[1]
  h, targets, weights, chunk = _pad_to_chunks(h, targets, weights.astype(jnp.float32), chunk)

  def body(carry, xs):
    total, dw = carry
    hc, yc, mc = xs
    logits, lse, nll = _chunk_nll(hc, w, yc)
    g = jnp.exp(logits - lse[..., None])
    g = g - jax.nn.one_hot(yc, logits.shape[-1], dtype=g.dtype)
    g = (g * mc[..., None]).astype(h.dtype)  # the compute dtype, as the plain path's backward matmuls use
    dh = jnp.einsum("btv,dv->btd", g, w)
    dw = dw + jnp.einsum("btd,btv->dv", hc, g, preferred_element_type=jnp.float32)
    return (total + jnp.sum(nll * mc), dw), dh

  xs = (_chunked(h, chunk), _chunked(targets, chunk), _chunked(weights, chunk))
  (total, dw), dh = jax.lax.scan(body, (jnp.zeros((), jnp.float32), jnp.zeros(w.shape, jnp.float32)), xs)
  dh = jnp.moveaxis(dh, 0, 1).reshape(h.shape)[:, :t]
  return total, (dh, dw.astype(w.dtype))


def _bwd(chunk, residuals, cotangent):
  dh, dw = residuals
  return (cotangent * dh).astype(dh.dtype), (cotangent * dw).astype(dw.dtype), None, None


weighted_nll_sum.defvjp(_forward_with_grads, _bwd)

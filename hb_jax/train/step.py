"""The train step: masked cross-entropy, gradient accumulation, AdamW, all one jitted pure function.

State is a `TrainState` of plain pytrees (params as the nested dict `hb_jax/model_folder.py` stores, optax state,
step, base RNG key), so Orbax saves it as is and `jax.jit` donates it. The model's graph is split off once
(`nnx.split`) and merged inside the traced function: no Python object traversal per step.

Loss: the mean over response tokens of the global batch (all micro-batches together). Each micro-batch
contributes its summed token loss divided by the global count, so k micro-batches of a batch give the
same gradient as the batch in one piece (up to float summation order).

Numerics: params and optimizer state fp32 ("master weights"); the model casts kernels to its compute
dtype (bf16 on accelerators with ModelConfig.dtype 'auto'); log-softmax and the loss run in fp32.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hb_jax.config import ModelConfig, TrainConfig
from hb_jax.model import llama
from hb_jax.model.llama import Llama
from hb_jax.parallel import TRAIN_RULES, Rules, abstract_params, logical_to_spec, param_shardings
from hb_jax.train import fused_loss

Array = jax.Array
Batch = Mapping[str, Array]  # inputs, targets, loss_mask, positions, segment_ids: [micro, rows, T]


@struct.dataclass
class TrainState:
  params: Any  # nested dict of fp32 arrays (same tree as a model folder's params/)
  opt_state: Any
  step: Array  # int32 scalar: optimizer steps taken
  rng: Array  # uint32[2] base key; step t uses fold_in(rng, t), so a resumed run draws the same dropout


# ---------------------------------------------------------------- schedule and optimizer


def lr_schedule(tc: TrainConfig, num_steps: int) -> optax.Schedule:
  """Optional linear warmup 0 -> lr, then linear lr -> end_lr reached exactly at the last step."""
  decay_steps = max(1, num_steps - 1 - tc.warmup_steps)
  decay = optax.linear_schedule(tc.learning_rate, tc.end_learning_rate, decay_steps)
  if tc.warmup_steps <= 0:
    return decay
  warm = optax.linear_schedule(0.0, tc.learning_rate, tc.warmup_steps)
  return optax.join_schedules([warm, decay], [tc.warmup_steps])


def _decay_mask(params: Any) -> Any:
  """Weight decay on matrices only: RMSNorm weights (any path containing 'norm') are not decayed."""
  def keep(path, _):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    return not re.search(r"norm", name)
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(tc: TrainConfig, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = lr_schedule(tc, num_steps)
  parts = []
  if tc.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(tc.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=tc.adam_b1, b2=tc.adam_b2, eps=tc.adam_eps,
                           weight_decay=tc.weight_decay, mask=_decay_mask))
  return optax.chain(*parts), schedule


# ---------------------------------------------------------------- loss


def token_nll(logits: Array, targets: Array) -> Array:
  """-log softmax(logits)[target] in fp32, [..., V] x [...] -> [...]."""
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return lse - picked


def loss_sums(graphdef: nnx.GraphDef, params: Any, batch: Batch, dropout_key: Array | None) -> tuple[Array, Array]:
  """(summed response-token NLL, number of response tokens) of one micro-batch [rows, T]."""
  model = nnx.merge(graphdef, params)
  mask = batch["loss_mask"].astype(jnp.float32)
  if model.cfg.loss_chunk:
    h, _ = model(batch["inputs"], batch["positions"], batch["segment_ids"], dropout_key=dropout_key,
                 return_hidden=True)
    total = fused_loss.weighted_nll_sum(h, model.head_weight(h.dtype), batch["targets"], mask,
                                        model.cfg.loss_chunk)
    return total, jnp.sum(mask)
  logits, _ = model(batch["inputs"], batch["positions"], batch["segment_ids"], dropout_key=dropout_key)
  nll = token_nll(logits, batch["targets"])
  return jnp.sum(nll * mask), jnp.sum(mask)


def per_token_nll(graphdef: nnx.GraphDef, params: Any, batch: Batch) -> Array:
  """[rows, T] NLL of every slot (deterministic); for tests and analysis."""
  model = nnx.merge(graphdef, params)
  logits, _ = model(batch["inputs"], batch["positions"], batch["segment_ids"])
  return token_nll(logits, batch["targets"])


def _batch_stats(batch: Batch) -> dict[str, Array]:
  """Token counts for throughput/MFU: real tokens, and attended (query, key) pairs = sum(position + 1)."""
  real = batch["segment_ids"] > 0
  return {"tokens": jnp.sum(real).astype(jnp.float32),
          "loss_tokens": jnp.sum(batch["loss_mask"].astype(jnp.float32)),
          "attention_pairs": jnp.sum(jnp.where(real, batch["positions"] + 1, 0).astype(jnp.float32))}


def train_step(state: TrainState, batch: Batch, *, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
               schedule: optax.Schedule, use_dropout: bool = False,
               grad_shardings: Any = None) -> tuple[TrainState, dict[str, Array]]:
  """One optimizer step over a [micro, rows, T] batch; pure, so it can be jitted with donation."""
  stats = _batch_stats(batch)
  denom = jnp.maximum(stats["loss_tokens"], 1.0)
  step_key = jax.random.fold_in(state.rng, state.step)

  def micro_loss(params, micro, i):
    key = jax.random.fold_in(step_key, i) if use_dropout else None
    total, _ = loss_sums(graphdef, params, micro, key)
    return total / denom

  grad_fn = jax.value_and_grad(micro_loss)
  micro_count = batch["inputs"].shape[0]
  if micro_count == 1:
    loss, grads = grad_fn(state.params, jax.tree.map(lambda x: x[0], batch), 0)
  else:
    def body(carry, xs):
      loss_acc, grad_acc = carry
      micro, i = xs
      loss_i, grads_i = grad_fn(state.params, micro, i)
      grad_acc = jax.tree.map(jnp.add, grad_acc, grads_i)
      if grad_shardings is not None:
        grad_acc = jax.lax.with_sharding_constraint(grad_acc, grad_shardings)
      return (loss_acc + loss_i, grad_acc), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    if grad_shardings is not None:
      zeros = jax.lax.with_sharding_constraint(zeros, grad_shardings)
    (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                    (batch, jnp.arange(micro_count)))
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step), **stats}
  return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics


def eval_step(params: Any, batch: Batch, *, graphdef: nnx.GraphDef) -> dict[str, Array]:
  """Summed NLL and token count of a [1, rows, T] validation batch (deterministic: no dropout)."""
  total, count = loss_sums(graphdef, params, jax.tree.map(lambda x: x[0], batch), None)
  return {"loss_sum": total, "loss_tokens": count}


# ---------------------------------------------------------------- sharded state


def model_graphdef(cfg: ModelConfig) -> nnx.GraphDef:
  return llama.abstract_model(cfg)[0]


def state_shardings(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                    rules: Rules = TRAIN_RULES) -> TrainState:
  """Shardings of every TrainState leaf: optimizer moments follow their params, scalars replicate."""
  p_shard = param_shardings(cfg, rules, mesh)
  abstract_opt = jax.eval_shape(tx.init, abstract_params(cfg))
  replicated = NamedSharding(mesh, P())
  opt_shard = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, p_shard,
                                    transform_non_params=lambda _: replicated)
  return TrainState(params=p_shard, opt_state=opt_shard, step=replicated, rng=replicated)


def abstract_state(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                   rules: Rules = TRAIN_RULES) -> TrainState:
  """ShapeDtypeStructs with shardings: the restore target of a training checkpoint."""
  shardings = state_shardings(cfg, tx, mesh, rules)
  params = abstract_params(cfg)
  shapes = TrainState(params=params, opt_state=jax.eval_shape(tx.init, params),
                      step=jax.ShapeDtypeStruct((), jnp.int32), rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)


def init_state(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, *, seed: int = 0,
               params: Any = None, rules: Rules = TRAIN_RULES) -> TrainState:
  """A sharded TrainState. With `params` (e.g. restore_params(..., TRAIN_RULES)), they are placed on the
  training layout; without, the model is initialised from `seed` directly into its shards (jitted init
  with out_shardings: no host ever holds the full model)."""
  shardings = state_shardings(cfg, tx, mesh, rules)
  if params is None:
    def init_params():
      return nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(seed)), nnx.Param))
    with jax.set_mesh(mesh):
      params = jax.jit(init_params, out_shardings=shardings.params)()
  else:
    params = jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params), shardings.params)

  def init_rest(p):
    return tx.init(p), jnp.zeros((), jnp.int32), jax.random.PRNGKey(seed)

  with jax.set_mesh(mesh):
    opt_state, step, rng = jax.jit(init_rest, out_shardings=(shardings.opt_state, shardings.step,
                                                              shardings.rng))(params)
  return TrainState(params=params, opt_state=opt_state, step=step, rng=rng)


def batch_shardings(mesh: Mesh, rules: Rules = TRAIN_RULES) -> dict[str, NamedSharding]:
  spec = logical_to_spec((None, "batch", None), None, rules, dict(mesh.shape))
  return {k: NamedSharding(mesh, spec) for k in ("inputs", "targets", "loss_mask", "positions", "segment_ids")}


def jit_train_step(cfg: ModelConfig, tx: optax.GradientTransformation, schedule: optax.Schedule, mesh: Mesh,
                   rules: Rules = TRAIN_RULES) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """The jitted step: in/out shardings fixed, state donated. Call it inside `jax.set_mesh(mesh)`."""
  shardings = state_shardings(cfg, tx, mesh, rules)
  fn = functools.partial(train_step, graphdef=model_graphdef(cfg), tx=tx, schedule=schedule,
                         use_dropout=cfg.dropout_rate > 0, grad_shardings=shardings.params)
  replicated = NamedSharding(mesh, P())
  return jax.jit(fn, in_shardings=(shardings, batch_shardings(mesh, rules)),
                 out_shardings=(shardings, replicated), donate_argnums=0)


def jit_eval_step(cfg: ModelConfig, mesh: Mesh, rules: Rules = TRAIN_RULES) -> Callable[[Any, Batch], dict]:
  fn = functools.partial(eval_step, graphdef=model_graphdef(dataclasses.replace(cfg, dropout_rate=0.0)))
  return jax.jit(fn, in_shardings=(param_shardings(cfg, rules, mesh), batch_shardings(mesh, rules)),
                 out_shardings=NamedSharding(mesh, P()))

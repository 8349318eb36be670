"""Device mesh, logical-axis sharding rules, and multi-host initialisation.

Every parameter and activation carries logical axis names ('embed', 'heads', ...). One short table per
layout maps them to the mesh axes ('data', 'fsdp', 'tensor'). A mesh axis is used for a dimension only if it
divides it; otherwise that dimension is replicated (e.g. 2 KV heads on tensor=8 are replicated), so any
model runs on any mesh, at worst with some replication.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from hb_jax.config import MeshConfig

MESH_AXES = ("data", "fsdp", "tensor")
Rules = tuple[tuple[str, Any], ...]

# Training layout: parameters FSDP-sharded along 'embed' and tensor-parallel along heads/mlp/vocab;
# the batch is split over both data axes.
TRAIN_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)

# Serving layout (sampling): weights are replicated over the data axes and split over 'tensor' only, so
# no FSDP all-gather runs per decode step; the batch is split over the data axes, KV heads over 'tensor'.
SERVE_RULES: Rules = tuple((name, None if name == "embed" else axes) for name, axes in TRAIN_RULES)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all), -1 filling the rest.

  Axis order puts 'tensor' innermost so tensor-parallel collectives stay within a host's fast links.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = config.resolve(len(devices))
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def single_device_mesh(device: jax.Device | None = None) -> Mesh:
  return make_mesh(MeshConfig(1, 1, 1), [device or jax.devices()[0]])


def _mesh_axes_for(name: str | None, rules: Mapping[str, Any]) -> tuple[str, ...]:
  if name is None:
    return ()
  if name not in rules:
    raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
  axes = rules[name]
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int] | None,
                    rules: Rules, mesh_shape: Mapping[str, int]) -> P:
  """PartitionSpec for an array with these logical axes; mesh axes that don't divide a dim are dropped."""
  rules_map = dict(rules)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(logical_axes):
    axes = [a for a in _mesh_axes_for(name, rules_map) if a in mesh_shape and a not in used]
    if shape is not None:
      # Keep the longest prefix of mesh axes whose product divides the dimension.
      while axes and shape[i] % math.prod(mesh_shape[a] for a in axes):
        axes.pop()
    axes = [a for a in axes if mesh_shape[a] > 1]
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return P(*spec)


def constrain(x: jax.Array, logical_axes: Sequence[str | None], rules: Rules | None = None) -> jax.Array:
  """Sharding constraint on an activation, against the mesh set with `jax.set_mesh` (no-op without one).

  Rules default to TRAIN_RULES; the serving layout (SERVE_RULES) only differs in parameter placement, which
  is fixed by the arguments' shardings, so activations use one table.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or math.prod(mesh.axis_sizes) == 1:
    return x
  spec = logical_to_spec(logical_axes, x.shape, rules or TRAIN_RULES, dict(zip(mesh.axis_names,
                                                                               mesh.axis_sizes)))
  return jax.lax.with_sharding_constraint(x, spec)


def param_specs(state: Any, rules: Rules, mesh: Mesh) -> Any:
  """PartitionSpecs for an nnx.State of Params (abstract or concrete), from their logical_axes metadata."""
  from flax import nnx  # local: keep parallel.py importable without building a model

  mesh_shape = dict(mesh.shape)

  def spec(var):
    if not isinstance(var, nnx.Variable):
      return P()
    names = var.get_metadata().get("logical_axes")
    if names is None:
      return P()
    return logical_to_spec(names, var.shape, rules, mesh_shape)

  return jax.tree.map(spec, state, is_leaf=lambda v: isinstance(v, nnx.Variable))


def param_shardings(state: Any, rules: Rules, mesh: Mesh) -> Any:
  """NamedShardings for every leaf of an nnx.State (same tree structure as the state)."""
  from flax import nnx

  specs = param_specs(state, rules, mesh)
  return jax.tree.map(lambda v, s: v.replace(NamedSharding(mesh, s)) if isinstance(v, nnx.Variable)
                      else NamedSharding(mesh, s), state, specs,
                      is_leaf=lambda v: isinstance(v, nnx.Variable))


def data_sharding(mesh: Mesh, ndim: int = 2, rules: Rules = TRAIN_RULES) -> NamedSharding:
  """Sharding of a [batch, ...] input: batch over the data axes, the rest replicated."""
  spec = logical_to_spec(("batch",) + (None,) * (ndim - 1), None, rules, dict(mesh.shape))
  return NamedSharding(mesh, spec)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """How to join a multi-host job. Empty coordinator: let JAX auto-detect (TPU pods, SLURM, ...)."""
  coordinator_address: str = ""  # host:port of process 0
  num_processes: int = 0
  process_id: int = -1
  local_device_ids: tuple[int, ...] = ()
  cpu_collectives: str = "gloo"  # used only on CPU, where collectives need an implementation


def initialize_distributed(config: DistributedConfig = DistributedConfig(), *, force: bool = False) -> bool:
  """Initialises multi-host JAX; returns True if this process is part of a multi-process job.

  With an explicit coordinator, all three of coordinator/num_processes/process_id are required. Without
  one, JAX's cluster auto-detection is tried when the environment looks like a cluster (TPU VM metadata,
  SLURM, Open MPI, or JAX_COORDINATOR_ADDRESS); a plain single machine stays single-process.
  """
  explicit = bool(config.coordinator_address)
  if explicit and (config.num_processes <= 0 or config.process_id < 0):
    raise ValueError("distributed: coordinator_address needs num_processes > 0 and process_id >= 0, "
                     f"found num_processes={config.num_processes} process_id={config.process_id}")
  cluster_env = any(k in os.environ for k in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_ID",
                                               "JAX_COORDINATOR_ADDRESS", "CLOUD_TPU_TASK_ID",
                                               "TPU_WORKER_HOSTNAMES"))
  if not (explicit or cluster_env or force):
    return False
  if config.cpu_collectives and os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
  kwargs = {}
  if explicit:
    kwargs = dict(coordinator_address=config.coordinator_address, num_processes=config.num_processes,
                  process_id=config.process_id)
    if config.local_device_ids:
      kwargs["local_device_ids"] = list(config.local_device_ids)
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return jax.process_count() > 1

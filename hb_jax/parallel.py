"""Device mesh, logical-axis sharding rules, and multi-host initialisation: the one place shardings come from.

Every parameter, activation and KV-cache array carries logical axis names ('embed', 'heads', ...). One short
table per layout (TRAIN_RULES, SERVE_RULES) maps them to the mesh axes ('data', 'fsdp', 'tensor'); a config
overrides entries of it with `mesh.rules` (`with_overrides`). From these:

  abstract_params(cfg[, mesh, rules])   the params tree (nested dict) as ShapeDtypeStructs, sharded if asked
  param_shardings(params, rules, mesh)  NamedShardings for a model's params (cfg or nnx.State); the train
                                        step's optimizer state follows them (train/step.py)
  cache_shardings / constrain_cache     the same for a KVCache (model/kv_cache.py names its axes)
  constrain(x, axes, rules)             an activation's sharding constraint inside a jitted function
  batch_sharding(mesh, shape, rules)    a [batch, ...] input

A mesh axis must divide the parameter dimension it shards; when it does not, that is a ConfigError naming the
parameter, the dimension and the axis, with one exception: KV heads fewer than (or not divisible by) the
'tensor' axis are replicated across it and logged once (DESIGN.md), since GQA models have 8 or fewer. For
activations, caches and batch inputs a non-dividing axis is dropped silently instead: their sizes are
runtime choices, not model shapes (a decode batch of 1 on data=8 is legitimate, it just runs replicated).
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

from hb_jax.config import ConfigError, MeshConfig, ModelConfig

log = logging.getLogger(__name__)

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

LOGICAL_AXES = tuple(name for name, _ in TRAIN_RULES)
# The one parameter axis a mesh axis may fail to divide: replicated (and logged) instead of refused.
REPLICABLE_PARAM_AXES = ("kv_heads",)


# ------------------------------------------------------------------------------------------------ mesh


def target_platform() -> str:
  """The platform a program is built for: the mesh set with `jax.set_mesh` (a TPU pod's, compiled ahead of
  time on a CPU machine by hb_jax.preflight), else this process's default backend."""
  target = jax.sharding.get_abstract_mesh().abstract_device
  return target.platform if target is not None else jax.default_backend()


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None, *,
              all_devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all), -1 filling the rest.

  Axis order puts 'tensor' innermost so tensor-parallel collectives stay within a host's fast links. The
  whole job's devices are laid out by jax.make_mesh (physical topology); `all_devices` names them when they
  are not this process's jax.devices() (hb_jax.preflight: the compile-only devices of a TPU slice).
  """
  all_devices = list(jax.devices() if all_devices is None else all_devices)
  devices = all_devices if devices is None else list(devices)
  shape = config.resolve(len(devices))
  if devices == all_devices:
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def single_device_mesh(device: jax.Device | None = None) -> Mesh:
  return make_mesh(MeshConfig(1, 1, 1), [device or jax.devices()[0]])


# ------------------------------------------------------------------------------------------------ rules


def check_rule_overrides(overrides: Sequence[Any], where: str = "mesh.rules") -> Rules:
  """`overrides` (MeshConfig.rules: [logical axis, mesh axis | [mesh axes] | None] pairs) as a tuple of
  (str, str | tuple | None) pairs, or a ConfigError naming `where` and the entry."""
  if isinstance(overrides, (str, bytes)) or not isinstance(overrides, Sequence):
    raise ConfigError(f"{where}: expected a list of [logical axis, mesh axes] pairs, found {overrides!r}")
  out, seen = [], set()
  for i, entry in enumerate(overrides):
    at = f"{where}: entry {i} {entry!r}"
    if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 2:
      raise ConfigError(f"{at}: expected a [logical axis, mesh axes] pair")
    name, axes = entry
    if name not in LOGICAL_AXES:
      raise ConfigError(f"{at}: unknown logical axis {name!r}; expected one of {list(LOGICAL_AXES)}")
    if name in seen:
      raise ConfigError(f"{at}: logical axis {name!r} is given twice")
    seen.add(name)
    if axes is not None and not isinstance(axes, str):
      if isinstance(axes, bytes) or not isinstance(axes, Sequence):
        raise ConfigError(f"{at}: mesh axes must be a name, a list of names or None, found {axes!r}")
      axes = tuple(axes)
    names = () if axes is None else (axes,) if isinstance(axes, str) else axes
    unknown = [a for a in names if a not in MESH_AXES]
    if unknown:
      raise ConfigError(f"{at}: unknown mesh axis {unknown[0]!r}; expected one of {list(MESH_AXES)}")
    if len(set(names)) != len(names):
      raise ConfigError(f"{at}: a mesh axis is repeated")
    out.append((name, axes))
  return tuple(out)


def with_overrides(rules: Rules, overrides: Sequence[Any] | MeshConfig) -> Rules:
  """`rules` (TRAIN_RULES or SERVE_RULES) with the entries a config's `mesh.rules` names replaced, e.g.
  with_overrides(TRAIN_RULES, tc.mesh) for training and with_overrides(SERVE_RULES, cfg.mesh) for serving."""
  if isinstance(overrides, MeshConfig):
    overrides = overrides.rules
  table = dict(rules)
  table.update(check_rule_overrides(overrides))
  return tuple(table.items())


def _mesh_axes_for(name: str | None, rules: Mapping[str, Any]) -> tuple[str, ...]:
  if name is None:
    return ()
  if name not in rules:
    raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
  axes = rules[name]
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


# ------------------------------------------------------------------------- logical axes -> PartitionSpec


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int] | None,
                    rules: Rules, mesh_shape: Mapping[str, int]) -> P:
  """PartitionSpec for an activation, cache or batch array: a mesh axis that does not divide its dimension
  (or that an earlier dimension already uses) is dropped, so that dimension is split less or replicated.
  Parameters go through `param_spec` instead, which refuses that."""
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
    spec.append(_spec_entry(axes))
  return P(*spec)


def _spec_entry(axes: Sequence[str]):
  return None if not axes else axes[0] if len(axes) == 1 else tuple(axes)


def spec_ways(entry, mesh_shape: Mapping[str, int]) -> int:
  """How many ways one PartitionSpec entry (None, a mesh axis, or a tuple of them) splits its dimension."""
  axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  return math.prod(mesh_shape[a] for a in axes)


def batch_shards(batch: int, mesh_shape: Mapping[str, int], rules: Rules = TRAIN_RULES) -> int:
  """How many shards a batch of `batch` rows is split over (logical_to_spec's rule for the 'batch' axis)."""
  return spec_ways(logical_to_spec(("batch",), (batch,), rules, mesh_shape)[0], mesh_shape)


def _param_spec_and_problems(name: str, logical_axes: Sequence[str | None], shape: Sequence[int], rules: Rules,
                             mesh_shape: Mapping[str, int]) -> tuple[P, list[str], list[str]]:
  """(spec, problems, replicated): a parameter's PartitionSpec, what no mesh can give it under these rules
  (one line per dimension), and what of a REPLICABLE_PARAM_AXES dimension was replicated instead."""
  rules_map = dict(rules)
  used: dict[str, int] = {}  # mesh axis -> the dimension it shards
  spec, problems, replicated = [], [], []
  for i, logical in enumerate(logical_axes):
    kept: list[str] = []
    for a in _mesh_axes_for(logical, rules_map):
      n = mesh_shape.get(a, 1)
      if n == 1:
        continue
      if a in used:
        problem = f"{name} dim {i} ({shape[i]}) cannot use {a}={n}: it already shards dim {used[a]}"
      elif shape[i] % (math.prod(mesh_shape[b] for b in kept) * n):
        split = " x ".join(f"{b}={mesh_shape[b]}" for b in kept + [a])
        problem = f"{name} dim {i} ({shape[i]}) not divisible by {split}"
      else:
        kept.append(a)
        continue
      if logical in REPLICABLE_PARAM_AXES:
        replicated.append(f"{shape[i]} KV heads on {a}={n}")
      else:
        problems.append(f"{problem} (logical axis {logical!r})")
      break
    used.update((a, i) for a in kept)
    spec.append(_spec_entry(kept))
  return P(*spec), problems, replicated


_logged_replications: set[str] = set()


def _check_param_layout(problems: Sequence[str], replicated: Sequence[str]) -> None:
  """Raises a ConfigError for the first problem (counting the rest); logs each KV-head replication once."""
  if problems:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise ConfigError(f"sharding: parameter {problems[0]}{more}; use mesh axis sizes that divide it or map that "
                      "logical axis to other mesh axes (or None) in mesh.rules")
  for what in replicated:
    if what not in _logged_replications:
      _logged_replications.add(what)
      log.info("sharding: %s are replicated across it (k/v projections and the KV cache hold every KV head "
               "on each of its devices)", what)


def param_spec(name: str, logical_axes: Sequence[str | None], shape: Sequence[int], rules: Rules,
               mesh_shape: Mapping[str, int]) -> P:
  """PartitionSpec for the parameter `name` (dotted path): every mesh axis its rules name divides its
  dimension, else a ConfigError; KV heads a mesh axis does not divide are replicated, logged once."""
  spec, problems, replicated = _param_spec_and_problems(name, logical_axes, shape, rules, mesh_shape)
  _check_param_layout(problems, replicated)
  return spec


# ---------------------------------------------------------------------------------------- parameters


def _param_state(cfg: ModelConfig):
  """The nnx.State of a model's params as ShapeDtypeStructs with their logical-axes metadata."""
  from flax import nnx  # local: hb_jax.model.llama imports this module

  from hb_jax.model.llama import abstract_model

  return abstract_model(cfg)[1].filter(nnx.Param)


def _is_variable(x) -> bool:
  from flax import nnx

  return isinstance(x, nnx.Variable)


def _dotted(path) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_shardings(params: ModelConfig | Any, rules: Rules, mesh: Mesh) -> Any:
  """NamedShardings for a model's params under `rules` on `mesh`. `params` is a ModelConfig (-> a nested
  dict of NamedShardings, the tree `abstract_params`, a model folder's params/ and TrainState.params have)
  or an nnx.State of Params, abstract or concrete (-> the same State holding NamedShardings, for
  jax.device_put(state, ...)). The train step's optimizer moments take their param's sharding."""
  from flax import nnx

  state = _param_state(params) if isinstance(params, ModelConfig) else params
  mesh_shape = dict(mesh.shape)
  problems, replicated = [], []

  def sharding(path, var):
    if not _is_variable(var):  # a plain dict has no logical axes: replicating it all would go unnoticed
      raise TypeError(f"param_shardings: expected a ModelConfig or an nnx.State of Params, found a "
                      f"{type(var).__name__} at {_dotted(path)}")
    axes = var.get_metadata().get("logical_axes")
    if axes is None:
      return var.replace(NamedSharding(mesh, P()))
    spec, bad, copied = _param_spec_and_problems(_dotted(path), axes, var.shape, rules, mesh_shape)
    problems.extend(bad)
    replicated.extend(copied)
    return var.replace(NamedSharding(mesh, spec))

  shardings = jax.tree_util.tree_map_with_path(sharding, state, is_leaf=_is_variable)
  _check_param_layout(problems, replicated)
  return nnx.to_pure_dict(shardings) if isinstance(params, ModelConfig) else shardings


def abstract_params(cfg: ModelConfig, mesh: Mesh | None = None, rules: Rules | None = None) -> dict[str, Any]:
  """A model's params as a nested dict of ShapeDtypeStructs (the tree of a model folder's params/ and of
  TrainState.params), nothing allocated; with `mesh` and `rules` each carries its sharding (a restore target)."""
  from flax import nnx

  shapes = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), _param_state(cfg), is_leaf=_is_variable)
  shapes = nnx.to_pure_dict(shapes)
  if mesh is None:
    return shapes
  if rules is None:
    raise ValueError("abstract_params: a mesh needs rules (TRAIN_RULES or SERVE_RULES)")
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes,
                      param_shardings(cfg, rules, mesh))


def undivided_params(cfg: ModelConfig, mesh_shape: Mapping[str, int], rules: Rules) -> list[str]:
  """What `param_shardings` would refuse for this model, mesh shape and rules, one line per dimension
  ('<name> dim <i> (<size>) not divisible by <axis>=<n> ...'); [] when the layout works. No devices needed."""
  from flax import nnx

  problems = []
  for path, var in nnx.to_flat_state(_param_state(cfg)):
    axes = var.get_metadata().get("logical_axes")
    if axes is not None:
      problems += _param_spec_and_problems(".".join(map(str, path)), axes, var.shape, rules, mesh_shape)[1]
  return problems


# ------------------------------------------------------------------------------ caches, activations, inputs


def cache_shardings(cache, rules: Rules, mesh: Mesh):
  """A KVCache (of arrays or ShapeDtypeStructs) -> the same KVCache holding NamedShardings: K/V heads split
  like the k/v projections, rows like the batch (a dimension an axis does not divide is replicated)."""
  mesh_shape = dict(mesh.shape)
  return jax.tree.map(lambda a, axes: NamedSharding(mesh, logical_to_spec(axes, a.shape, rules, mesh_shape)),
                      cache, cache.logical_axes())


def constrain_cache(cache, rules: Rules | None = None):
  """`constrain` on every array of a KVCache, inside a jitted function (the layout of `cache_shardings`)."""
  return jax.tree.map(lambda a, axes: constrain(a, axes, rules), cache, cache.logical_axes())


def constrain(x: jax.Array, logical_axes: Sequence[str | None], rules: Rules | None = None) -> jax.Array:
  """Sharding constraint on an activation, against the mesh set with `jax.set_mesh` (no-op without one).

  Rules default to TRAIN_RULES; the serving layout (SERVE_RULES) only differs in parameter placement, which
  is fixed by the arguments' shardings, so activations use one table. A mesh axis that does not divide a
  dimension is dropped (logical_to_spec): activation shapes are runtime choices, not configuration errors.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or math.prod(mesh.axis_sizes) == 1:
    return x
  spec = logical_to_spec(logical_axes, x.shape, rules or TRAIN_RULES, dict(zip(mesh.axis_names,
                                                                               mesh.axis_sizes)))
  return jax.lax.with_sharding_constraint(x, spec)


def batch_sharding(mesh: Mesh, shape: Sequence[int], rules: Rules = TRAIN_RULES) -> NamedSharding:
  """Sharding of a [batch, ...] input: batch over the data axes that divide it, the rest replicated."""
  spec = logical_to_spec(("batch",) + (None,) * (len(shape) - 1), shape, rules, dict(mesh.shape))
  return NamedSharding(mesh, spec)


# ------------------------------------------------------------------------------------------- multi-host


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

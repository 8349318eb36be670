"""The machine a preflight compiles for: a TPU slice by its usual name, or N simulated CPU devices.

Slice names, as Cloud TPU spells them, map to the `name:dims` form libtpu's topology takes:

  v4-N    N TensorCores, N/2 chips (megacore: one JAX device per chip)   v4-8 2x2x1    v4-16 2x2x2    v4-32 2x2x4
          hosts of 4 chips                                               v4-64 2x4x4   v4-128 4x4x4   v4-256 4x4x8
                                                                         v4-512 4x8x8  v4-1024 8x8x8  v4-2048 8x8x16
  v5p-N   N TensorCores, N/2 chips (megacore), hosts of 4 chips          v5p-8 .. v5p-2048: the v4 shapes
  v5e-N   N chips (one core each), 8-chip hosts up to v5e-8, then 4      v5e-1 1x1  v5e-4 2x2  v5e-8 2x4  v5e-16 4x4
          (v6e-N the same)                                               v5e-32 4x8  v5e-64 8x8  v5e-128 8x16
                                                                         v5e-256 16x16
  v4:2x2x4, v5p:4x4x4, v5e:4x8, ...   the raw form, accepted as is (v4/v5p as megacore, hosts of 4 chips)
  cpu-N   N simulated CPU devices, no libtpu needed (jax has no compile-only CPU topology: the count is set
          before jax starts its CPU backend, so in a process that already has, N must not exceed its count)

TPU v4 compiles one device per core unless asked for megacore (`chip_config_name='megacore'`); a v4 job on a
pod runs megacore (one device of 32 GiB per chip), as hb_jax.estimate's chip table and the configs assume, so
v4 and v5p slices are described with it. The HBM a device has is the compiler's own figure (what it refuses a
program above), read once per slice from the refusal of a program that cannot fit.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

from hb_jax.config import ConfigError

GiB = 2**30

# Chips -> dims of the 3-D tori (v4, v5p) and the 2-D ones (v5e, v6e), as Cloud TPU provisions them.
TORUS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
            512: "8x8x8", 768: "8x8x12", 1024: "8x8x16", 2048: "8x16x16"}
TORUS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
# family -> (chips per name unit, dims table, megacore, estimate hardware name)
FAMILIES = {"v4": (0.5, TORUS_3D, True, "tpu-v4"), "v5p": (0.5, TORUS_3D, True, "tpu-v5p"),
            "v5e": (1, TORUS_2D, False, "tpu-v5e"), "v6e": (1, TORUS_2D, False, "tpu-v6e")}


@dataclasses.dataclass
class Target:
  name: str  # as asked: v5p-16, v4:2x2x4, cpu-8
  platform: str  # tpu | cpu
  topology: str  # libtpu's name:dims ('' for cpu)
  devices: list  # every device of the slice (compile-only for TPU)
  device_kind: str
  hbm_bytes: float | None  # per device, as the compiler counts it (None: XLA:CPU, no limit to check)
  hardware: str  # hb_jax.estimate's chip name ('' for cpu)
  megacore: bool

  @property
  def hosts(self) -> int:
    return len({d.process_index for d in self.devices})

  @property
  def local_devices(self) -> list:
    """Process 0's devices: where a host's inference replica runs (hb_jax.pipeline.stages' inference_mesh)."""
    first = min(d.process_index for d in self.devices)
    return [d for d in self.devices if d.process_index == first]

  def describe(self) -> dict[str, Any]:
    return {"name": self.name, "platform": self.platform, "topology": self.topology, "devices": len(self.devices),
            "hosts": self.hosts, "devices_per_host": len(self.local_devices), "device_kind": self.device_kind,
            "megacore": self.megacore}


def parse(name: str) -> tuple[str, str, dict[str, Any], bool, str]:
  """A slice name -> (platform, topology name:dims, get_topology_desc kwargs, megacore, hardware name)."""
  if m := re.fullmatch(r"cpu-(\d+)", name):
    if int(m.group(1)) < 1:
      raise ConfigError(f"--topology={name}: expected cpu-N with N >= 1")
    return "cpu", "", {}, False, ""
  if m := re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name):
    family, n = m.group(1), int(m.group(2))
    per_unit, table, megacore, hw = FAMILIES[family]
    chips = n * per_unit
    if chips != int(chips) or int(chips) not in table:
      unit = "TensorCores (2 per chip)" if per_unit < 1 else "chips"
      known = ", ".join(f"{family}-{int(c / per_unit)}" for c in sorted(table))
      raise ConfigError(f"--topology={name}: {family}-N counts {unit}; known sizes: {known} (or the raw form, "
                        f"e.g. {family}:{table[max(table)]})")
    return "tpu", f"{family}:{table[int(chips)]}", _topology_kwargs(family, int(chips)), megacore, hw
  if m := re.fullmatch(r"(v4|v5p|v5e|v6e):(\d+(?:x\d+)+)", name):
    family, dims = m.group(1), m.group(2)
    chips = 1
    for d in dims.split("x"):
      chips *= int(d)
    _, _, megacore, hw = FAMILIES[family]
    return "tpu", name, _topology_kwargs(family, chips), megacore, hw
  raise ConfigError(f"--topology={name!r}: expected a TPU slice (v4-32, v5p-16, v5e-256, v6e-8), a raw topology "
                    "(v4:2x2x4, v5e:4x8) or cpu-N")


def _topology_kwargs(family: str, chips: int) -> dict[str, Any]:
  if FAMILIES[family][2]:
    return {"chip_config_name": "megacore", "chips_per_host_bounds": (2, 2, 1)}
  host = {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 4, 1)}.get(chips, (2, 2, 1))
  return {"chips_per_host_bounds": host}


def target(name: str) -> Target:
  """The devices of `name` (see the module docstring); TPU slices need libtpu (the `tpu` extra)."""
  platform, topo, kwargs, megacore, hw = parse(name)
  if platform == "cpu":
    return _cpu_target(name, int(name.split("-")[1]))
  from hb_jax.preflight import libtpu
  try:
    devices = list(libtpu.topology(topo, **kwargs).devices)
  except libtpu.MissingLibtpu:
    raise
  except Exception as e:  # libtpu's refusal of a shape it does not know
    raise ConfigError(f"--topology={name}: libtpu cannot describe {topo}: {str(e).splitlines()[0]}") from None
  return Target(name, "tpu", topo, devices, devices[0].device_kind, device_hbm_bytes(topo, **kwargs), hw, megacore)


def _cpu_target(name: str, n: int) -> Target:
  import jax
  from jax._src import xla_bridge
  if not xla_bridge.backends_are_initialized():
    jax.config.update("jax_num_cpu_devices", n)
  devices = jax.devices("cpu")
  if len(devices) < n:
    raise ConfigError(f"--topology={name}: this process started jax with {len(devices)} CPU device(s); the count "
                      "is fixed when jax starts, so run the preflight in a fresh process")
  return Target(name, "cpu", "", devices[:n], devices[0].device_kind, None, "", False)


@functools.lru_cache(maxsize=None)
def device_hbm_bytes(topo: str, **kwargs) -> float | None:
  """The HBM one device of the slice offers a program, in bytes, as the TPU compiler counts it: read from
  its refusal of a program that cannot fit ('exceeds available HBM (30.75G)', G = GiB)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  from hb_jax.preflight import libtpu
  device = libtpu.topology(topo, **kwargs).devices[0]
  sharding = NamedSharding(Mesh(np.array([device]), ("x",)), P())
  too_big = jax.ShapeDtypeStruct((2**40 // 4,), jnp.float32, sharding=sharding)  # 1 TiB
  try:
    jax.jit(lambda a: a + 1, out_shardings=sharding).lower(too_big).compile()
  except Exception as e:  # the refusal carries the number
    found = parse_oom(str(e))
    return found[1] if found else None
  return None


def parse_oom(message: str) -> tuple[float, float] | None:
  """(bytes needed, bytes available) from the TPU compiler's out-of-memory refusal, or None."""
  m = re.search(r"required for [^(]*\(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)", message)
  if not m:
    return None
  unit = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
  return float(m.group(1)) * unit[m.group(2)], float(m.group(3)) * unit[m.group(4)]

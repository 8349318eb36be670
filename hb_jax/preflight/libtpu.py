"""libtpu (the `tpu` extra) on a machine without TPU chips: quiet for CPU work, loadable for compiling.

With libtpu installed, JAX tries its TPU backend first whenever JAX_PLATFORMS is unset: libtpu loads, finds no
chip, prints ~5 lines (`Failed to find host bounds`, `unexpected worker hostname`, ...) and JAX falls back to
the CPU. Two remedies, both only where no TPU chip is attached (the PCI scan JAX itself does), so a TPU VM is
never touched:

  cpu_only_when_nothing_else()  importing hb_jax calls it: on a machine with neither a TPU chip nor a GPU the
                                CPU is the only backend JAX could pick, so it is picked at once (JAX_PLATFORMS
                                =cpu, what a user would type) and libtpu is never loaded. An explicit
                                JAX_PLATFORMS, even an empty one, is left alone.
  topology(name, **kw)          hb_jax.preflight loads libtpu to describe a pod it compiles for; that load
                                prints the same lines, which are dropped here (only those: every other line
                                libtpu writes reaches stderr). ALLOW_MULTIPLE_LIBTPU_LOAD=1 is set too: the lock
                                it lifts guards TPU chips, and without any two processes could not compile for a
                                pod at once (two test workers, two preflights).

Nothing here imports jax at module level: hb_jax's import runs the first function before jax is imported.
"""
from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import sys
import tempfile

GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips (jax._src.hardware_utils reads the same files)
GPU_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")

# What libtpu prints when it loads without a TPU chip; each line contains one of these.
NOISE = ("Failed to find host bounds for accelerator type", "Logging before InitGoogle()",
         "unexpected worker hostname", "=== Source Location Trace: ===", "libtpu_init_utils.cc")


class MissingLibtpu(ImportError):
  """A TPU topology was asked for without libtpu installed."""


def tpu_chips_attached() -> bool:
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor) as f:
        if f.read().strip() == GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def gpu_attached() -> bool:
  return any(os.path.exists(p) for p in GPU_DEVICE_FILES)


def installed() -> bool:
  try:
    return importlib.util.find_spec("libtpu") is not None
  except (ImportError, ValueError):  # a module entry of None (blocked), or a broken install
    return False


def cpu_only_when_nothing_else() -> None:
  """JAX_PLATFORMS=cpu when libtpu is installed but no accelerator is attached and JAX_PLATFORMS is unset."""
  findable = installed() or os.path.isfile(os.environ.get("TPU_LIBRARY_PATH", ""))  # jax loads either
  if "JAX_PLATFORMS" in os.environ or not findable or tpu_chips_attached() or gpu_attached():
    return
  jax = sys.modules.get("jax")
  if jax is None:
    os.environ["JAX_PLATFORMS"] = "cpu"  # read when jax is imported
    return
  from jax._src import xla_bridge  # jax came first: its config, if no backend has started yet
  if not xla_bridge.backends_are_initialized() and not jax.config.jax_platforms:
    jax.config.update("jax_platforms", "cpu")


@contextlib.contextmanager
def _without_noise():
  """Runs the block with file descriptor 2 captured; afterwards writes back every line but libtpu's NOISE."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
              if not any(n in line for n in NOISE)]
      if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


def topology(name: str, **kwargs):
  """jax.experimental.topologies.get_topology_desc(name, platform='tpu', **kwargs): compile-only devices of
  a TPU slice. Raises MissingLibtpu, naming the extra, when libtpu is not installed."""
  if not installed():
    raise MissingLibtpu("compiling for a TPU topology needs libtpu: pip install 'hb_jax[tpu]' (or "
                      "`pip install -c constraints.txt 'jax[tpu]'`), or use --topology=cpu-N")
  from jax.experimental import topologies
  if tpu_chips_attached():
    return topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs)
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  with _without_noise():
    return topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs)

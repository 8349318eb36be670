"""hb_jax: instruction backtranslation (Humpback) in JAX."""

__version__ = "0.1.0"

# The `tpu` extra (libtpu) on a machine with no accelerator: pick the CPU before jax tries libtpu and prints
# its warnings (hb_jax/preflight/libtpu.py; nothing changes where a TPU or GPU is attached, or JAX_PLATFORMS set).
from hb_jax.preflight.libtpu import cpu_only_when_nothing_else as _cpu_only_when_nothing_else  # noqa: E402

_cpu_only_when_nothing_else()

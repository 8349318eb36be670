"""XLA flags for every test process (pytest's own, set by conftest.py, and the subprocesses tests launch).

The suite compiles far more than it runs: tiny models, a few steps each. LLVM's backend at -O0 compiles
XLA:CPU programs ~30% faster (tests/sample/test_programs.py + tests/train/test_train_step.py: 56 s against
80 s). The HLO passes (fusion, sharding, layout) are unchanged, and LLVM reassociates no floating-point math
at any level without fast-math, so the numbers are the same; `make demo`, the benches and users' runs keep
XLA's default. No imports here: workers read it before jax starts."""
FAST_COMPILE = "--xla_backend_optimization_level=0"


def for_devices(n: int) -> str:
  """XLA_FLAGS for a test process with `n` simulated CPU devices."""
  return f"--xla_force_host_platform_device_count={n} {FAST_COMPILE}"

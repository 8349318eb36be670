"""Test-wide set-up: 8 simulated CPU devices, so mesh tests run anywhere.

XLA reads the flag once, at backend start, so it must be set before anything imports jax.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_collection_modifyitems(session, config, items):
  """Files holding `slow` tests run first. The Makefile spreads whole files over two workers in collection
  order (`--dist loadfile --no-loadscope-reorder`); starting the long files first keeps one worker from
  picking up a several-minute file while the other has already run out of work."""
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow_files)  # stable: order within each group is kept

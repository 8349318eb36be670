"""Helpers for the pipeline tests: the tiny config as a PipelineConfig, with overrides."""
from __future__ import annotations

import importlib.util
import os

from hb_jax.pipeline.config import from_config_dict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config_dict(name: str = "tiny"):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(REPO, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def tiny_config(**overrides):
  """configs/tiny.py with dotted overrides, e.g. tiny_config(**{"augment.sampling.temperature": 0.5})."""
  cd = load_config_dict("tiny").to_dict()
  for dotted, value in overrides.items():
    node = cd
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(dotted)
    node[leaf] = value
  return from_config_dict(cd)

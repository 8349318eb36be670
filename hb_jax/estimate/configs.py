"""A launch config file as the cost model reads it: `load_config("configs/X.py[:variant]")` -> the
PipelineConfig launch/run.py would build, the model shape, and the variant's hardware and slice.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any, Sequence

from hb_jax.config import ConfigError, ModelConfig


@dataclasses.dataclass
class LoadedConfig:
  pipeline: Any  # PipelineConfig
  model: ModelConfig
  model_name: str
  hardware: str  # the variant's hardware (or the --hardware asked for)
  chips: int  # the variant's reference slice size (0: unknown)
  slice: str
  path: str


def load_config(spec: str, hardware_name: str | None = None, preset_name: str | None = None,
                overrides: Sequence[str] = ()) -> LoadedConfig:
  """`configs/X.py[:variant]` (+ `a.b=value` overrides) -> the PipelineConfig launch/run.py would build (through
  the same loader, hb_jax.pipeline.config.load) + the model shape and the variant's hardware.

  The model comes from `preset_name`, else the config module's MODEL_PRESET, else the base model folder's
  model.json, else the synthetic base preset (configs/demo.py). The hardware variant: the ':variant'
  suffix, else `hardware_name` when the module has a LAYOUTS entry for it, else the module's default.
  """
  from hb_jax.pipeline.config import load

  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config={spec!r}: no such file {path!r}")
  name = os.path.splitext(os.path.basename(path))[0]
  mod_spec = importlib.util.spec_from_file_location(f"hb_estimate_config_{name}", path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  layouts = getattr(mod, "LAYOUTS", {})
  if not variant and hardware_name and hardware_name in layouts:
    variant = hardware_name
  if variant and layouts and variant not in layouts:
    raise ConfigError(f"--config={spec!r}: variant {variant!r} unknown; {path} defines {sorted(layouts)}")
  pcfg = load(f"{path}:{variant}" if variant else path, overrides)
  layout = layouts.get(variant or getattr(mod, "DEFAULT_HARDWARE", ""))
  model_name = preset_name or getattr(mod, "MODEL_PRESET", "")
  model = _model(model_name, pcfg, path)
  if not model_name:
    model_name = pcfg.inputs.base_model or pcfg.base.preset
  return LoadedConfig(pcfg, model, model_name, getattr(layout, "hardware", "") or hardware_name or "h100",
                      getattr(layout, "chips", 0), getattr(layout, "slice", ""), path)


def _model(preset_name: str, pcfg, path: str) -> ModelConfig:
  from hb_jax.model.presets import preset
  if preset_name:
    return preset(preset_name)
  if pcfg.inputs.kind == "files":
    from etils import epath
    mj = epath.Path(pcfg.inputs.base_model) / "model.json"
    if mj.exists():
      return ModelConfig.from_json(mj.read_text(), str(mj))
    raise ConfigError(f"{path}: no MODEL_PRESET and no {mj}; pass --preset NAME")
  return preset(pcfg.base.preset, vocab_size=pcfg.base.vocab_size)

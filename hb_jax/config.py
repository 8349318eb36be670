"""Typed configuration for hb_jax.

Configs are Python files returning `ml_collections.ConfigDict`s (so absl `--config.a.b=value` overrides
work); they are validated into the frozen dataclasses below, which is what the code consumes. Each dataclass
validates itself in `__post_init__` and names the offending key when something is wrong.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

FORMAT_VERSION = 1
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
  """A configuration value is invalid; the message names the key."""


def ffn_dim(hidden_size: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
  """Meta's LLaMA FFN width rule: 2/3 of 4d, optionally scaled, rounded up to `multiple_of`."""
  hidden = int(2 * (4 * hidden_size) / 3)
  if ffn_dim_multiplier is not None:
    hidden = int(ffn_dim_multiplier * hidden)
  return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """LLaMA-3.1 frequency-dependent RoPE scaling (HF `rope_type: llama3`)."""
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192
  rope_type: str = "llama3"

  def __post_init__(self):
    if self.rope_type != "llama3":
      raise ConfigError(f"rope_scaling.rope_type: only 'llama3' is supported, found {self.rope_type!r}")
    if self.high_freq_factor <= self.low_freq_factor:
      raise ConfigError("rope_scaling: high_freq_factor must exceed low_freq_factor, found "
                        f"{self.high_freq_factor} <= {self.low_freq_factor}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """One config for the LLaMA family (LLaMA 1/2/3, MHA/GQA/MQA)."""
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int | None = None  # None: MHA (= num_heads)
  head_dim: int | None = None  # None: hidden_size // num_heads
  intermediate_size: int | None = None  # None: Meta's rule, ffn_dim(hidden_size, multiple_of, multiplier)
  multiple_of: int = 256
  ffn_dim_multiplier: float | None = None
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  bos_id: int = 1
  eos_id: int = 2
  # Numerics: parameters are stored in param_dtype; matmuls run in dtype ('auto': bfloat16 on GPU/TPU,
  # float32 on CPU). RMSNorm, RoPE and softmax always run in float32.
  param_dtype: str = "float32"
  dtype: str = "auto"
  # Training-only knobs (no effect when deterministic=True).
  dropout_rate: float = 0.0
  remat: str = "none"  # none | full | dots (save matmul outputs, recompute the rest)

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    if self.num_kv_heads is None:
      set_("num_kv_heads", self.num_heads)
    if self.head_dim is None:
      if self.hidden_size % self.num_heads:
        raise ConfigError(f"model.hidden_size {self.hidden_size} is not divisible by model.num_heads "
                          f"{self.num_heads}; set model.head_dim explicitly")
      set_("head_dim", self.hidden_size // self.num_heads)
    if self.intermediate_size is None:
      set_("intermediate_size", ffn_dim(self.hidden_size, self.multiple_of, self.ffn_dim_multiplier))
    if isinstance(self.rope_scaling, Mapping):
      set_("rope_scaling", RopeScaling(**dict(self.rope_scaling)))
    for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                "intermediate_size"):
      if int(getattr(self, key)) <= 0:
        raise ConfigError(f"model.{key} must be positive, found {getattr(self, key)}")
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(f"model.num_heads {self.num_heads} must be a multiple of model.num_kv_heads "
                        f"{self.num_kv_heads}")
    if self.head_dim % 2:
      raise ConfigError(f"model.head_dim must be even for RoPE, found {self.head_dim}")
    if self.param_dtype not in DTYPES:
      raise ConfigError(f"model.param_dtype must be one of {DTYPES}, found {self.param_dtype!r}")
    if self.dtype not in DTYPES + ("auto",):
      raise ConfigError(f"model.dtype must be one of {DTYPES + ('auto',)}, found {self.dtype!r}")
    if self.remat not in ("none", "full", "dots"):
      raise ConfigError(f"model.remat must be none|full|dots, found {self.remat!r}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ConfigError(f"model.dropout_rate must be in [0, 1), found {self.dropout_rate}")

  @property
  def num_params(self) -> int:
    """Total parameter count (embedding and head counted separately unless tied)."""
    d, f, h, k, hd = (self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads,
                      self.head_dim)
    per_layer = d * h * hd * 2 + d * k * hd * 2 + 3 * d * f + 2 * d
    head = 0 if self.tie_word_embeddings else self.vocab_size * d
    return self.vocab_size * d + self.num_layers * per_layer + d + head

  @property
  def num_params_no_embedding(self) -> int:
    """Parameters that cost 2 FLOPs per token each in a forward pass (the MFU convention)."""
    return self.num_params - self.vocab_size * self.hidden_size * (0 if self.tie_word_embeddings else 1)

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["format_version"] = FORMAT_VERSION
    return out

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, data: Mapping[str, Any], where: str = "model config") -> "ModelConfig":
    data = dict(data)
    version = data.pop("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
      raise ConfigError(f"{where}: format_version {version} is newer than this hb_jax understands "
                        f"({FORMAT_VERSION}); upgrade hb_jax")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
      raise ConfigError(f"{where}: unknown keys {unknown}; expected a subset of {sorted(known)}")
    return cls(**data)

  @classmethod
  def from_json(cls, text: str, where: str = "model.json") -> "ModelConfig":
    return cls.from_dict(json.loads(text), where)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh shape over the axes (data, fsdp, tensor); one entry may be -1 to take the rest."""
  data: int = 1
  fsdp: int = -1
  tensor: int = 1

  def __post_init__(self):
    sizes = (self.data, self.fsdp, self.tensor)
    if sum(s == -1 for s in sizes) > 1:
      raise ConfigError(f"mesh: at most one of data/fsdp/tensor may be -1, found {sizes}")
    for name, s in zip(("data", "fsdp", "tensor"), sizes):
      if s == 0 or s < -1:
        raise ConfigError(f"mesh.{name} must be positive or -1, found {s}")

  def resolve(self, num_devices: int) -> tuple[int, int, int]:
    """Axis sizes for `num_devices`, filling the -1 entry."""
    sizes = [self.data, self.fsdp, self.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise ConfigError(f"mesh {tuple(sizes)}: {num_devices} devices are not divisible by {known}")
      sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
      raise ConfigError(f"mesh {tuple(sizes)} needs {math.prod(sizes)} devices, found {num_devices}")
    return tuple(sizes)


def from_config_dict(cls, cd: Mapping[str, Any] | None, where: str):
  """Builds dataclass `cls` from a (possibly partial) ConfigDict/mapping; unknown keys are errors."""
  if cd is None:
    return cls()
  data = cd.to_dict() if hasattr(cd, "to_dict") else dict(cd)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - known)
  if unknown:
    raise ConfigError(f"{where}: unknown keys {unknown}; expected a subset of {sorted(known)}")
  return cls(**data)

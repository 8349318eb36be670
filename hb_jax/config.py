"""Typed configuration for hb_jax.

Configs are Python files returning `ml_collections.ConfigDict`s (so absl `--config.a.b=value` overrides
work); they are validated into the frozen dataclasses below, which is what the code consumes. Each dataclass
validates itself in `__post_init__` and names the offending key when something is wrong.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
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


# hb_jax.model.attention.IMPLEMENTATIONS (this layer imports nothing from the model's).
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "chunked", "splash", "cudnn")


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
  eos_id: int = 2  # generation stops at it (training targets end with the tokenizer's EOS)
  # Further ids generation stops at exactly as at eos_id (excluded from the output), e.g. LLaMA-3.1-Instruct's
  # <|eom_id|> and <|eot_id|> from a list-valued HF `eos_token_id`. Left out of model.json when empty.
  extra_eos_ids: tuple[int, ...] = ()
  # Numerics: parameters are stored in param_dtype; matmuls run in dtype ('auto': bfloat16 on GPU/TPU,
  # float32 on CPU). RMSNorm, RoPE and softmax always run in float32.
  param_dtype: str = "float32"
  dtype: str = "auto"
  # Training-only knobs (no effect when deterministic=True).
  dropout_rate: float = 0.0
  remat: str = "none"  # none | full | dots (save matmul outputs, recompute the rest)
  # Layers per iteration of the scanned layer loop (training and scoring): 1 compiles one layer body, which
  # keeps compile time flat for 80-layer models; num_layers unrolls it, which saved 8% of a 58M-parameter
  # train step on CPU (bench/train.py).
  scan_unroll: int = 1
  # Training loss: 0 builds the [B, T, vocab] logits at once; N > 0 runs the head and the loss N positions
  # at a time with their gradients taken in the same pass (hb_jax/train/fused_loss.py), so the float32
  # logits never exist whole. Same loss and gradients; on CPU 0.4 s of a 4.5 s 58M-parameter step.
  loss_chunk: int = 0
  # How attention is computed (hb_jax.model.attention): auto | xla | chunked | splash | cudnn. A runtime
  # choice like the mesh: never written to model.json (a folder opens with `auto`), set per run with
  # --config.model.attention.
  attention: str = "auto"

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
    if isinstance(self.extra_eos_ids, (str, bytes)) or not isinstance(self.extra_eos_ids, (list, tuple)):
      raise ConfigError(f"model.extra_eos_ids must be a list of token ids, found {self.extra_eos_ids!r}")
    set_("extra_eos_ids", tuple(self.extra_eos_ids))
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
    if self.scan_unroll < 1:
      raise ConfigError(f"model.scan_unroll must be >= 1, found {self.scan_unroll}")
    if self.loss_chunk < 0:
      raise ConfigError(f"model.loss_chunk must be >= 0, found {self.loss_chunk}")
    if self.remat not in ("none", "full", "dots"):
      raise ConfigError(f"model.remat must be none|full|dots, found {self.remat!r}")
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      raise ConfigError(f"model.attention must be one of {ATTENTION_IMPLEMENTATIONS}, found {self.attention!r}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ConfigError(f"model.dropout_rate must be in [0, 1), found {self.dropout_rate}")
    for i in self.extra_eos_ids:
      if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size:
        raise ConfigError(f"model.extra_eos_ids: expected token ids in [0, {self.vocab_size}), found {i!r}")
    if len(set(self.extra_eos_ids)) != len(self.extra_eos_ids) or self.eos_id in self.extra_eos_ids:
      raise ConfigError(f"model.extra_eos_ids must be distinct and exclude eos_id {self.eos_id}, found "
                        f"{list(self.extra_eos_ids)}")

  @property
  def eos_ids(self) -> tuple[int, ...]:
    """Every id generation stops at: eos_id, then extra_eos_ids."""
    return (self.eos_id,) + self.extra_eos_ids

  @property
  def params_per_layer(self) -> int:
    """Parameters of one decoder layer: q and o, k and v projections, the SwiGLU MLP, two RMSNorm scales."""
    d, f, h, k, hd = (self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads,
                      self.head_dim)
    return d * h * hd * 2 + d * k * hd * 2 + 3 * d * f + 2 * d

  @property
  def num_params(self) -> int:
    """Total parameter count (embedding and head counted separately unless tied)."""
    d = self.hidden_size
    head = 0 if self.tie_word_embeddings else self.vocab_size * d
    return self.vocab_size * d + self.num_layers * self.params_per_layer + d + head

  @property
  def num_params_no_embedding(self) -> int:
    """Parameters that cost 2 FLOPs per token each in a forward pass (the MFU convention)."""
    return self.num_params - self.vocab_size * self.hidden_size * (0 if self.tie_word_embeddings else 1)

  def fields_dict(self) -> dict[str, Any]:
    """The fields as a dict, less extra_eos_ids when empty: what model.json and run fingerprints hold, so a
    config without extra end ids serialises (and fingerprints) as it did before the field existed. Less
    `attention` always: how a run computes attention is not part of the model."""
    out = dataclasses.asdict(self)
    del out["attention"]
    if not out["extra_eos_ids"]:
      del out["extra_eos_ids"]
    return out

  def to_dict(self) -> dict[str, Any]:
    out = self.fields_dict()
    out["format_version"] = FORMAT_VERSION
    return out

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, data: Mapping[str, Any], where: str = "model config") -> "ModelConfig":
    data = dict(data)
    version = data.pop("format_version", FORMAT_VERSION)
    data.pop("extra", None)  # free-form provenance written beside the config (e.g. converted_from)
    if version > FORMAT_VERSION:
      raise ConfigError(f"{where}: format_version {version} is newer than this hb_jax understands "
                        f"({FORMAT_VERSION}); upgrade hb_jax")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
      raise ConfigError(f"{where}: unknown keys {unknown}; expected a subset of {sorted(known)}")
    try:
      return cls(**data)
    except ConfigError as e:
      raise ConfigError(f"{where}: {e}") from e

  @classmethod
  def from_json(cls, text: str, where: str = "model.json") -> "ModelConfig":
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise ConfigError(f"{where}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
      raise ConfigError(f"{where}: expected a JSON object of ModelConfig fields, found {type(data).__name__}")
    return cls.from_dict(data, where)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh shape over the axes (data, fsdp, tensor); one entry may be -1 to take the rest."""
  data: int = 1
  fsdp: int = -1
  tensor: int = 1
  # Overrides of the layout's logical-axis -> mesh-axes table (hb_jax.parallel TRAIN_RULES for train.mesh,
  # SERVE_RULES for the inference mesh): [logical axis, mesh axis | [mesh axes] | None] pairs, e.g.
  # (("embed", None),) to keep weights whole. Empty by default: the tables as they are.
  rules: tuple[tuple[str, str | tuple[str, ...] | None], ...] = ()

  def __post_init__(self):
    if self.rules:
      from hb_jax.parallel import check_rule_overrides  # local: hb_jax.parallel imports this module
      object.__setattr__(self, "rules", check_rule_overrides(self.rules))
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


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How one bulk pass decodes: the token rule (temperature 0 is greedy; top-k, then top-p, as Hugging Face
  orders them), the length budget, and the run seed (hashed with each record id into its row's key). The
  defaults are the paper's nucleus sampling; every stage that generates holds one of these."""
  temperature: float = 0.7
  top_p: float = 0.9
  top_k: int = 0
  max_new_tokens: int = 512
  seed: int = 0

  def __post_init__(self):
    if self.temperature < 0:
      raise ConfigError(f"sampling.temperature must be >= 0, found {self.temperature}")
    if not 0.0 < self.top_p <= 1.0:
      raise ConfigError(f"sampling.top_p must be in (0, 1], found {self.top_p}")
    if self.top_k < 0:
      raise ConfigError(f"sampling.top_k must be >= 0, found {self.top_k}")
    if self.max_new_tokens <= 0:
      raise ConfigError(f"sampling.max_new_tokens must be positive, found {self.max_new_tokens}")


def _check_value(value: Any, hint: Any, where: str) -> Any:
  """`value` as the field type `hint` wants it (ints accepted for floats, lists for tuples), else a ConfigError
  naming `where`. Only the shapes our dataclasses use are understood: scalars, X | None, tuple[X, ...]."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if hint is Any:
    return value
  if origin in (typing.Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    inner = [a for a in args if a is not type(None)]
    return _check_value(value, inner[0], where) if len(inner) == 1 else value
  if dataclasses.is_dataclass(hint):
    if isinstance(value, hint):
      return value
    if isinstance(value, Mapping) or hasattr(value, "to_dict"):
      return build(hint, value, where)
    raise ConfigError(f"{where}: expected a section of {hint.__name__} fields, found {value!r}")
  if origin is tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
      raise ConfigError(f"{where}: expected a list, found {value!r}")
    item = args[0] if args else Any
    if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:
      return tuple(_check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    return tuple(value)
  if hint is bool:
    if not isinstance(value, bool):
      raise ConfigError(f"{where}: expected true or false, found {value!r}")
    return value
  if hint is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise ConfigError(f"{where}: expected an integer, found {value!r}")
    return value
  if hint is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"{where}: expected a number, found {value!r}")
    return float(value)
  if hint is str:
    if not isinstance(value, str):
      raise ConfigError(f"{where}: expected a string, found {value!r}")
    return value
  return value


def build(cls, data: Mapping[str, Any] | None, where: str):
  """The one way a config section becomes its dataclass: `data` (a mapping or ConfigDict, possibly partial)
  -> `cls`, nested sections built recursively. Unknown keys (with the nearest known ones, or the key that
  replaced a renamed one) and mistyped values are ConfigErrors naming the dotted key; the dataclasses'
  own checks (`__post_init__`) run last and are prefixed with `where` when they do not name it."""
  if data is None:
    return cls()
  if hasattr(data, "to_dict"):
    data = data.to_dict()
  if not isinstance(data, Mapping):
    raise ConfigError(f"{where}: expected a section of {cls.__name__} fields, found {data!r}")
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for key, value in data.items():
    if key not in fields:
      raise _unknown_key(cls, key, where)
    kwargs[key] = _check_value(value, hints[key], f"{where}.{key}")
  try:
    return cls(**kwargs)
  except ConfigError as e:
    raise ConfigError(_located(str(e), where, fields)) from None
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{where}: {e}") from e


def _located(message: str, where: str, fields) -> str:
  """A dataclass's own check names its field by a short section name ("sampling.top_p must be ..."); say where
  in the config it is ("config.augment.sampling.top_p must be ...")."""
  if message.startswith(where):
    return message
  head, dot, rest = message.partition(".")
  if dot and head.isidentifier() and rest.split(" ", 1)[0].split(".")[0].strip(":") in fields:
    return f"{where}.{rest}"
  return f"{where}: {message}"


def _unknown_key(cls, key: str, where: str) -> ConfigError:
  """The error for `key`, which section `cls` (at `where`) lacks: the key that replaced it (the class's RENAMED
  table), else the nearest field."""
  new = getattr(cls, "RENAMED", {}).get(key)
  if new is not None:
    return ConfigError(f"{where}.{key} was renamed: set {where}.{new} instead")
  fields = sorted(f.name for f in dataclasses.fields(cls) if f.init)
  near = difflib.get_close_matches(key, fields, n=1)
  hint = f"; did you mean {where}.{near[0]}?" if near else f"; expected one of {fields}"
  return ConfigError(f"{where}.{key}: unknown key{hint}")


def check_key(cls, dotted: str, where: str = "config") -> None:
  """Raises the ConfigError `build` would give for a dotted key (e.g. an absl `--config.a.b=` override) that
  names no field of `cls`'s section tree: the renamed key's replacement, or the nearest known key."""
  node, path = cls, where
  for part in dotted.split("."):
    if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
      raise ConfigError(f"{path} is a value, not a section: {where}.{dotted} names no key")
    fields = {f.name for f in dataclasses.fields(node) if f.init}
    if part not in fields:
      raise _unknown_key(node, part, path)
    hint = typing.get_type_hints(node)[part]
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    node = inner[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(inner) == 1 else hint
    path = f"{path}.{part}"


def to_plain(x: Any) -> Any:
  """A config dataclass as plain nested dicts and lists (tuples become lists): what manifests hash."""
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return {f.name: to_plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
  if isinstance(x, (list, tuple)):
    return [to_plain(v) for v in x]
  return x


def to_config_dict(x: Any):
  """A config dataclass as an ml_collections ConfigDict holding every field (tuples stay tuples), so a config
  file can start from the typed defaults and absl `--config.a.b=value` reaches every key."""
  from ml_collections import config_dict

  def node(v):
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
      return {f.name: node(getattr(v, f.name)) for f in dataclasses.fields(v)}
    return v
  return config_dict.ConfigDict(node(x))


def _pow2_ceil(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


DEFAULT_LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def check_length_buckets(buckets: tuple[int, ...], key: str) -> None:
  if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] <= 0:
    raise ConfigError(f"{key} must be positive and strictly increasing, found {buckets}")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """Sampling and scoring engines: the batching plan, and the decoding a call uses when it names none
  (`sampling`, the paper's T=0.7, top-p 0.9).

  Prompt lengths are padded up to `length_buckets` and batch sizes to powers of two (at most `max_batch`),
  so a corpus compiles a handful of programs. Rows that finish are refilled from the queue between decode
  chunks of at most `chunk_steps` steps; a chunk also ends early once `min_refill` rows (default
  max_batch // 8) are free, so long outputs don't idle the batch.
  """
  sampling: SamplingConfig = SamplingConfig()
  max_batch: int = 32
  min_refill: int = 0  # 0: max(1, max_batch // 8)
  chunk_steps: int = 64
  length_buckets: tuple[int, ...] = DEFAULT_LENGTH_BUCKETS
  prefix_min_tokens: int = 64  # prompts sharing at least this many leading tokens reuse one prefilled prefix
  bulk_chunk_records: int = 1024  # bulk generation plans and commits this many input records at a time
  score_batch: int = 16
  score_block: int = 128  # scoring projects to the vocabulary this many positions at a time
  # 0: each row's KV cache is one contiguous buffer; N: a paged cache of N-slot pages handed out as rows grow
  # (decode reads only the pages a row has filled; a refill writes straight into its pages). docs/attention.md
  page_size: int = 0

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("length_buckets", tuple(int(b) for b in self.length_buckets))
    if isinstance(self.sampling, Mapping):
      set_("sampling", build(SamplingConfig, self.sampling, "sample.sampling"))
    if self.min_refill < 0:
      raise ConfigError(f"sample.min_refill must be >= 0, found {self.min_refill}")
    if self.page_size < 0:
      raise ConfigError(f"sample.page_size must be >= 0 (0: no paging), found {self.page_size}")
    for key in ("chunk_steps", "bulk_chunk_records", "score_batch", "score_block",
                "prefix_min_tokens"):
      if getattr(self, key) <= 0:
        raise ConfigError(f"sample.{key} must be positive, found {getattr(self, key)}")
    if self.max_batch <= 0 or _pow2_ceil(self.max_batch) != self.max_batch:
      raise ConfigError(f"sample.max_batch must be a power of two, found {self.max_batch}")
    check_length_buckets(self.length_buckets, "sample.length_buckets")

  @property
  def refill_min(self) -> int:
    return min(self.max_batch, self.min_refill or max(1, self.max_batch // 8))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Supervised finetuning (loss on response tokens only). Defaults are the paper's where it gives them:
  lr 1e-5 decaying linearly to 9e-6 at the last step, weight decay 0.1, dropout 0.1, 32 examples per step
  (8 below 3,000 examples). AdamW betas (0.9, 0.95) follow a public reproduction (the paper is silent)."""
  learning_rate: float = 1e-5
  end_learning_rate: float = 9e-6
  warmup_steps: int = 0  # linear 0 -> learning_rate first, then the linear decay
  weight_decay: float = 0.1  # not applied to RMSNorm weights
  adam_b1: float = 0.9
  adam_b2: float = 0.95
  adam_eps: float = 1e-8
  grad_clip_norm: float = 1.0  # 0: no clipping
  dropout_rate: float = 0.1
  batch_size: int = 0  # examples per optimizer step; 0: the paper's rule (below)
  small_data_batch_size: int = 8
  large_data_batch_size: int = 32
  small_data_threshold: int = 3000  # fewer training examples than this -> small_data_batch_size
  micro_batches: int = 1  # gradient accumulation: the step scans over this many parts of the batch
  num_steps: int = 0  # 0: num_epochs if set, else the paper's steps for the data size
  num_epochs: float = 0.0
  seq_len: int = 2048  # row length in tokens
  overlong: str = "truncate"  # truncate | drop (see hb_jax/data/loader.py)
  packing: bool = True
  rows_per_micro_batch: int = 0  # 0: planned from the data (the fewest rows every step fits in)
  val_examples: int = 0  # held-out examples for validation loss (taken before training, seeded)
  val_fraction: float = 0.0  # used when val_examples is 0
  eval_every: int = 0  # steps; 0: only at the end (when there is a validation split)
  seed: int = 0  # data order, dropout, validation split
  dtype: str = "auto"  # compute dtype override for the model ('auto': bf16 on accelerators, fp32 on CPU)
  remat: str = ""  # '' keeps the model's; none | full | dots
  loss_chunk: int = 0  # 0 keeps the model's; N > 0: head + loss N positions at a time (ModelConfig.loss_chunk)
  mesh: MeshConfig = MeshConfig()  # the training mesh (data, fsdp, tensor); FSDP over all devices by default
  # Keys of an earlier layout -> the key that replaced them in this section: a config that still uses one
  # is refused naming the new key, and manifests recorded with it read in today's layout.
  RENAMED: typing.ClassVar[dict[str, str]] = {"mesh_data": "mesh.data", "mesh_fsdp": "mesh.fsdp",
                                               "mesh_tensor": "mesh.tensor"}
  checkpoint_every: int = 100  # steps; a checkpoint is also written at the end and on SIGTERM
  keep_checkpoints: int = 2
  async_checkpointing: bool = True
  log_every: int = 10
  tensorboard: bool = False
  progress_bar: bool = True
  peak_flops_per_device: float = 0.0  # for MFU; 0: a known accelerator's bf16 peak, else no MFU
  direction: str = "forward"  # forward: instruction -> output; backward: output -> instruction
  tag_mode: str = "source"  # forward prompts' tag (hb_jax.data.prompts.tag_for); 'none' for no tag

  def __post_init__(self):
    if isinstance(self.mesh, Mapping):
      object.__setattr__(self, "mesh", build(MeshConfig, self.mesh, "train.mesh"))
    for key in ("warmup_steps", "batch_size", "num_steps", "rows_per_micro_batch", "val_examples",
                "eval_every", "checkpoint_every", "seed"):
      if getattr(self, key) < 0:
        raise ConfigError(f"train.{key} must be >= 0, found {getattr(self, key)}")
    for key in ("micro_batches", "seq_len", "keep_checkpoints", "log_every", "small_data_batch_size",
                "large_data_batch_size"):
      if getattr(self, key) <= 0:
        raise ConfigError(f"train.{key} must be positive, found {getattr(self, key)}")
    if self.learning_rate <= 0 or self.end_learning_rate < 0:
      raise ConfigError(f"train.learning_rate must be > 0 and end_learning_rate >= 0, found "
                        f"{self.learning_rate}, {self.end_learning_rate}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ConfigError(f"train.dropout_rate must be in [0, 1), found {self.dropout_rate}")
    if not 0.0 <= self.val_fraction < 1.0:
      raise ConfigError(f"train.val_fraction must be in [0, 1), found {self.val_fraction}")
    if self.overlong not in ("truncate", "drop"):
      raise ConfigError(f"train.overlong must be truncate|drop, found {self.overlong!r}")
    if self.direction not in ("forward", "backward"):
      raise ConfigError(f"train.direction must be forward|backward, found {self.direction!r}")
    if self.remat not in ("", "none", "full", "dots"):
      raise ConfigError(f"train.remat must be ''|none|full|dots, found {self.remat!r}")
    if self.dtype not in DTYPES + ("auto",):
      raise ConfigError(f"train.dtype must be one of {DTYPES + ('auto',)}, found {self.dtype!r}")

  def examples_per_step(self, num_examples: int) -> int:
    if self.batch_size:
      return self.batch_size
    return self.small_data_batch_size if num_examples < self.small_data_threshold else self.large_data_batch_size

  def steps_for(self, num_examples: int) -> int:
    """num_steps; else ceil(num_epochs x examples / batch); else the paper's steps for the data size
    (7B scaling runs: 3,200 -> 500, 6,400 -> 600, 12,800 -> 600, 25,600 -> 1,200, 51,200 -> 1,600; the
    row of the largest size not above num_examples, 500 below 3,200, 1,600 above 51,200)."""
    if self.num_steps:
      return self.num_steps
    if self.num_epochs:
      return max(1, math.ceil(self.num_epochs * num_examples / self.examples_per_step(num_examples)))
    steps = 500
    for size, s in ((3200, 500), (6400, 600), (12800, 600), (25600, 1200), (51200, 1600)):
      if num_examples >= size:
        steps = s
    return steps


# TrainConfig fields that change how a run is watched or laid out, not what it computes: a resumed run may
# change them (the mesh too: checkpoints restore onto another mesh), and the pipeline's layout fields
# (hb_jax.pipeline.runner.LAYOUT_FIELDS) include them.
RUN_NEUTRAL_FIELDS = ("progress_bar", "log_every", "tensorboard", "checkpoint_every", "keep_checkpoints",
                      "async_checkpointing", "eval_every", "peak_flops_per_device", "mesh")

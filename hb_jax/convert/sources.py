"""Tensor sources: read checkpoint tensors one at a time, by Hugging Face name, without loading them all.

`HFSource` reads safetensors (one file, or shards listed by `model.safetensors.index.json`) and never
imports torch. `MetaSource` reads Meta's `consolidated.NN.pth` model-parallel shards (torch, mmap,
`weights_only=True`), merges each tensor along its parallel axis and permutes wq/wk from Meta's interleaved
RoPE layout to HF's rotate-half layout, then presents the result under HF names, so one mapping to
hb_jax params serves both. `GGUFSource` (hb_jax/convert/gguf_source.py) does the same for llama.cpp's GGUF files.

Each source also names the tokenizer file and its settings files (tokenizer_config.json, chat template,
generation_config.json) that the model folder keeps.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Protocol

import numpy as np
from etils import epath

from hb_jax.model_folder import settings_paths
from hb_jax.config import ConfigError, ModelConfig
from hb_jax.convert.hf_config import model_config_from_hf, model_config_from_meta


log = logging.getLogger(__name__)


class ConversionError(RuntimeError):
  """The input checkpoint is unreadable or does not match its config; the message names the tensor."""


class TensorSource(Protocol):
  where: str
  config: ModelConfig
  tokenizer_file: epath.Path | None
  settings_files: list[epath.Path]  # named like checkpoint.SETTINGS_FILES

  def names(self) -> list[str]: ...
  def shape(self, name: str) -> tuple[int, ...]: ...
  def dtype(self, name: str) -> str: ...  # "float32", "float16", "bfloat16", or what else was found
  def get(self, name: str) -> np.ndarray: ...
  def close(self) -> None: ...


def _tokenizer_in(folder: epath.Path) -> epath.Path | None:
  for name in ("tokenizer.model", "tokenizer.json"):
    path = folder / name
    if not path.exists():
      continue
    if name == "tokenizer.model" and is_tiktoken_file(path):
      # Meta's LLaMA-3 tokenizer is tiktoken BPE, which hb_jax reads only as HF's tokenizer.json: the weights
      # convert fine, but carrying this file as sentencepiece would make the model folder unloadable.
      log.warning("%s: a tiktoken BPE file (LLaMA-3), not sentencepiece; not copied. Put tokenizer.json from "
                  "the Hugging Face release in the model folder.", path)
      continue
    return path
  return None


def _read_json_object(path: epath.Path, error=ConversionError) -> dict:
  """A JSON file holding an object, or `error` naming the file."""
  try:
    value = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise error(f"{path}: not valid JSON: {e}") from e
  except UnicodeDecodeError as e:
    raise error(f"{path}: not UTF-8 text: {e}") from e
  if not isinstance(value, dict):
    raise error(f"{path}: expected a JSON object, found {type(value).__name__}")
  return value


def is_tiktoken_file(path: epath.Path) -> bool:
  """Whether a `tokenizer.model` is tiktoken BPE text (Meta's LLaMA-3 release: "<base64 token> <rank>"
  lines), not a sentencepiece model."""
  with path.open("rb") as f:
    head = f.read(256)
  first = head.split(b"\n", 1)[0]
  return bool(re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+", first))


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class HFSource:
  """A Hugging Face LLaMA folder: config.json + safetensors (single or sharded with an index)."""

  def __init__(self, folder, **config_overrides):
    from safetensors import safe_open  # no torch import on this path

    self.folder = epath.Path(folder)
    self.where = str(self.folder)
    cfg_path = self.folder / "config.json"
    hf_cfg = _read_json_object(cfg_path, ConfigError)
    gen_path = self.folder / "generation_config.json"  # may list more end ids (eos_token_id) than config.json
    gen_cfg = _read_json_object(gen_path, ConfigError) if gen_path.exists() else None
    self.config = model_config_from_hf(hf_cfg, where=str(cfg_path), generation_config=gen_cfg,
                                       generation_where=str(gen_path), **config_overrides)
    self.torch_dtype = hf_cfg.get("torch_dtype") or hf_cfg.get("dtype") or "float32"
    self.tokenizer_file = _tokenizer_in(self.folder)
    self.settings_files = settings_paths(self.folder)
    index = self.folder / "model.safetensors.index.json"
    if index.exists():
      weight_map = _read_json_object(index).get("weight_map")
      if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ConversionError(f"{index}: expected a 'weight_map' object of tensor name -> file name, found "
                              f"{str(weight_map)[:80]}")
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(p.name for p in self.folder.glob("*.safetensors"))
      if not files:
        bins = sorted(p.name for p in self.folder.glob("*.bin"))
        hint = f" (found {bins}: re-save with safe_serialization=True)" if bins else ""
        raise ConversionError(f"{self.folder}: no *.safetensors files{hint}")
      weight_map = None
    self._handles = {}
    self._file_of: dict[str, str] = {}
    for name in files:
      path = self.folder / name
      if not path.exists():
        raise ConversionError(f"{index}: lists {name}, which does not exist")
      try:
        handle = safe_open(str(path), framework="numpy")
      except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ConversionError(f"{path}: unreadable safetensors file: {e}") from e
      self._handles[name] = handle
      for key in handle.keys():
        if weight_map is not None and weight_map.get(key) != name:
          continue
        if key in self._file_of:  # without an index, two files holding one name would race silently
          raise ConversionError(f"{self.folder}: tensor {key} is in both {self._file_of[key]} and {name}; "
                                "remove the extra file or add a model.safetensors.index.json")
        self._file_of[key] = name
    if weight_map is not None:
      missing = sorted(k for k, f in weight_map.items() if self._file_of.get(k) != f)
      if missing:
        raise ConversionError(f"{index}: tensors listed but absent from their files: {missing[:5]}")

  def names(self) -> list[str]:
    return sorted(self._file_of)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handles[self._file_of[name]].get_slice(name).get_shape())

  def dtype(self, name: str) -> str:
    found = self._handles[self._file_of[name]].get_slice(name).get_dtype()
    return _SAFETENSORS_DTYPES.get(found, found)

  def get(self, name: str) -> np.ndarray:
    return self._handles[self._file_of[name]].get_tensor(name)

  def close(self) -> None:
    self._handles.clear()


# Meta parameter name -> (HF name, axis along which model-parallel shards are concatenated; None: replicated)
_META_LAYER = {
    "attention.wq.weight": ("self_attn.q_proj.weight", 0),
    "attention.wk.weight": ("self_attn.k_proj.weight", 0),
    "attention.wv.weight": ("self_attn.v_proj.weight", 0),
    "attention.wo.weight": ("self_attn.o_proj.weight", 1),
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", 0),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", 1),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", 0),
    "attention_norm.weight": ("input_layernorm.weight", None),
    "ffn_norm.weight": ("post_attention_layernorm.weight", None),
}
_META_TOP = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", "embedding"),
    "norm.weight": ("model.norm.weight", None),
    "output.weight": ("lm_head.weight", 0),
}
_META_IGNORED = re.compile(r"^rope\.freqs$")


def interleaved_to_rotate_half(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Meta's wq/wk rows pair dims (0,1),(2,3)..; HF's pair (0, d/2),(1, d/2+1).. : reorder rows per head."""
  rows, cols = w.shape
  return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def rotate_half_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of interleaved_to_rotate_half (used to build Meta-layout test checkpoints)."""
  rows, cols = w.shape
  return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def _torch_to_numpy(t) -> np.ndarray:
  import torch

  if t.dtype == torch.bfloat16:
    import ml_dtypes

    return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.contiguous().numpy()


class MetaSource:
  """A Meta LLaMA folder: params.json + consolidated.NN.pth (NN = model-parallel rank)."""

  def __init__(self, folder):
    try:
      import torch
    except ImportError as e:
      raise ConversionError("reading Meta .pth checkpoints needs torch: pip install 'hb_jax[convert]'") from e
    self.folder = epath.Path(folder)
    self.where = str(self.folder)
    params_path = self.folder / "params.json"
    self.meta_params = _read_json_object(params_path, ConfigError)
    shard_paths = sorted(self.folder.glob("consolidated.*.pth"))
    if not shard_paths:
      raise ConversionError(f"{self.folder}: params.json but no consolidated.*.pth files")
    expected = [f"consolidated.{i:02d}.pth" for i in range(len(shard_paths))]
    if [p.name for p in shard_paths] != expected:
      raise ConversionError(f"{self.folder}: model-parallel shards must be {expected}, found "
                            f"{[p.name for p in shard_paths]}")
    self._shards = []
    for p in shard_paths:
      try:
        self._shards.append(torch.load(str(p), map_location="cpu", mmap=True, weights_only=True))
      except Exception as e:
        raise ConversionError(f"{p}: unreadable checkpoint: {e}") from e
    keys0 = set(self._shards[0])
    for p, shard in zip(shard_paths[1:], self._shards[1:]):
      if set(shard) != keys0:
        diff = sorted(set(shard) ^ keys0)[:5]
        raise ConversionError(f"{p}: holds different tensor names than {shard_paths[0].name}: {diff}")
    self._names: dict[str, tuple[str, object]] = {}
    for key in sorted(keys0):
      if _META_IGNORED.match(key):
        continue
      m = re.match(r"^layers\.(\d+)\.(.+)$", key)
      if m and m.group(2) in _META_LAYER:
        hf, axis = _META_LAYER[m.group(2)]
        self._names[f"model.layers.{m.group(1)}.{hf}"] = (key, axis)
      elif key in _META_TOP:
        hf, axis = _META_TOP[key]
        self._names[hf] = (key, axis)
      else:
        self._names[f"meta:{key}"] = (key, None)  # unknown: reported as an unexpected tensor
    dim = int(self.meta_params["dim"])
    vocab = self.shape("model.embed_tokens.weight")[0]
    ffn = self.shape("model.layers.0.mlp.gate_proj.weight")[0]
    self.config = model_config_from_meta(self.meta_params, vocab, ffn, where=str(params_path))
    if self.shape("model.embed_tokens.weight")[1] != dim:
      raise ConversionError(f"{self.folder}: tok_embeddings.weight width "
                            f"{self.shape('model.embed_tokens.weight')[1]} != params.json dim {dim}")
    self.tokenizer_file = _tokenizer_in(self.folder) or _tokenizer_in(self.folder.parent)
    self.settings_files = settings_paths(self.tokenizer_file.parent) if self.tokenizer_file else []
    self.torch_dtype = "bfloat16"

  def _axis(self, meta_key: str, axis) -> int | None:
    if axis != "embedding" or len(self._shards) == 1:
      return axis if len(self._shards) > 1 else None
    # LLaMA 1/2 split the embedding along its width (ParallelEmbedding), LLaMA 3 along the vocabulary.
    width = self._shards[0][meta_key].shape[1]
    return 0 if width == int(self.meta_params["dim"]) else 1

  def names(self) -> list[str]:
    return sorted(self._names)

  def shape(self, name: str) -> tuple[int, ...]:
    key, axis = self._names[name]
    shape = list(self._shards[0][key].shape)
    axis = self._axis(key, axis)
    if axis is not None:
      shape[axis] = sum(s[key].shape[axis] for s in self._shards)
    return tuple(shape)

  def dtype(self, name: str) -> str:
    key, _ = self._names[name]
    return str(self._shards[0][key].dtype).removeprefix("torch.")

  def get(self, name: str) -> np.ndarray:
    key, axis = self._names[name]
    axis = self._axis(key, axis)
    parts = [_torch_to_numpy(s[key]) for s in (self._shards if axis is not None else self._shards[:1])]
    w = parts[0] if axis is None else np.concatenate(parts, axis=axis)
    if key.endswith("attention.wq.weight"):
      w = interleaved_to_rotate_half(w, self.config.num_heads)
    elif key.endswith("attention.wk.weight"):
      w = interleaved_to_rotate_half(w, self.config.num_kv_heads)
    return w

  def close(self) -> None:
    self._shards.clear()


def is_gguf_file(path: epath.Path) -> bool:
  """Whether `path` is a GGUF file (llama.cpp's format: the file starts with the magic b'GGUF')."""
  if not path.is_file():
    return False
  with path.open("rb") as f:
    return f.read(4) == b"GGUF"


def open_source(path, **config_overrides) -> TensorSource:
  """Detects the checkpoint format of `path` (a HF folder with config.json, a Meta folder with params.json,
  or a GGUF file) and opens it."""
  path = epath.Path(path)
  if path.is_file() and is_gguf_file(path):
    if config_overrides:
      raise ConversionError(f"{path}: config overrides are only supported for HF folders")
    from hb_jax.convert.gguf_source import GGUFSource
    return GGUFSource(path)
  if not path.is_dir():
    what = "does not exist" if not path.exists() else "is a file but not a GGUF file (no 'GGUF' magic)"
    raise ConversionError(f"{path}: input is not a folder and {what}; expected a Hugging Face or Meta folder "
                          "or a .gguf file")
  folder = path
  if (folder / "config.json").exists():
    return HFSource(folder, **config_overrides)
  if (folder / "params.json").exists():
    if config_overrides:
      raise ConversionError(f"{folder}: config overrides are only supported for HF folders")
    return MetaSource(folder)
  raise ConversionError(f"{folder}: unknown checkpoint format: expected config.json (Hugging Face) or "
                        "params.json + consolidated.NN.pth (Meta), or a .gguf file")

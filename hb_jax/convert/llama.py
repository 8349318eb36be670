"""HF-named LLaMA tensors <-> hb_jax params.

Every mapping is a transpose plus a reshape that splits (or merges) the head axis: HF's `q_proj.weight`
[heads*head_dim, embed] becomes `layers.self_attn.q_proj.kernel[i]` [embed, heads, head_dim]. Per-layer
tensors are stacked on the leading `layers` axis, filled one tensor at a time into a preallocated array, so
peak host memory stays about one copy of the weights.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Callable, Iterator

import numpy as np
from etils import epath

from hb_jax import model_folder
from hb_jax.config import ModelConfig
from hb_jax.convert.hf_config import hf_config_from_model, hf_eos_token_id
from hb_jax.convert.sources import ConversionError, TensorSource, open_source


@dataclasses.dataclass(frozen=True)
class Mapping:
  ours: tuple[str, ...]  # path in the params dict
  hf: str  # HF tensor name; '{i}' marks a per-layer tensor
  hf_shape: Callable[[ModelConfig], tuple[int, ...]]
  to_ours: Callable[[np.ndarray, ModelConfig], np.ndarray]
  to_hf: Callable[[np.ndarray, ModelConfig], np.ndarray]

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.hf


def _proj_in(heads_of: Callable[[ModelConfig], int]):
  """[heads*hd, embed] (HF) <-> [embed, heads, hd] (ours)."""
  return dict(
      hf_shape=lambda c: (heads_of(c) * c.head_dim, c.hidden_size),
      to_ours=lambda w, c: w.T.reshape(c.hidden_size, heads_of(c), c.head_dim),
      to_hf=lambda w, c: w.reshape(c.hidden_size, heads_of(c) * c.head_dim).T)


_TRANSPOSE = dict(to_ours=lambda w, c: w.T, to_hf=lambda w, c: w.T)
_SAME = dict(to_ours=lambda w, c: w, to_hf=lambda w, c: w)


def mappings(cfg: ModelConfig) -> list[Mapping]:
  layer = "model.layers.{i}."
  out = [
      Mapping(("embed_tokens", "embedding"), "model.embed_tokens.weight",
              hf_shape=lambda c: (c.vocab_size, c.hidden_size), **_SAME),
      Mapping(("layers", "self_attn", "q_proj", "kernel"), layer + "self_attn.q_proj.weight",
              **_proj_in(lambda c: c.num_heads)),
      Mapping(("layers", "self_attn", "k_proj", "kernel"), layer + "self_attn.k_proj.weight",
              **_proj_in(lambda c: c.num_kv_heads)),
      Mapping(("layers", "self_attn", "v_proj", "kernel"), layer + "self_attn.v_proj.weight",
              **_proj_in(lambda c: c.num_kv_heads)),
      Mapping(("layers", "self_attn", "o_proj", "kernel"), layer + "self_attn.o_proj.weight",
              hf_shape=lambda c: (c.hidden_size, c.num_heads * c.head_dim),
              to_ours=lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
              to_hf=lambda w, c: w.reshape(c.num_heads * c.head_dim, c.hidden_size).T),
      Mapping(("layers", "mlp", "gate_proj", "kernel"), layer + "mlp.gate_proj.weight",
              hf_shape=lambda c: (c.intermediate_size, c.hidden_size), **_TRANSPOSE),
      Mapping(("layers", "mlp", "up_proj", "kernel"), layer + "mlp.up_proj.weight",
              hf_shape=lambda c: (c.intermediate_size, c.hidden_size), **_TRANSPOSE),
      Mapping(("layers", "mlp", "down_proj", "kernel"), layer + "mlp.down_proj.weight",
              hf_shape=lambda c: (c.hidden_size, c.intermediate_size), **_TRANSPOSE),
      Mapping(("layers", "input_layernorm", "weight"), layer + "input_layernorm.weight",
              hf_shape=lambda c: (c.hidden_size,), **_SAME),
      Mapping(("layers", "post_attention_layernorm", "weight"), layer + "post_attention_layernorm.weight",
              hf_shape=lambda c: (c.hidden_size,), **_SAME),
      Mapping(("norm", "weight"), "model.norm.weight", hf_shape=lambda c: (c.hidden_size,), **_SAME),
  ]
  if not cfg.tie_word_embeddings:
    out.append(Mapping(("lm_head", "kernel"), "lm_head.weight",
                       hf_shape=lambda c: (c.vocab_size, c.hidden_size), **_TRANSPOSE))
  return out


def expected_hf_names(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  names = {}
  for m in mappings(cfg):
    for i in range(cfg.num_layers) if m.per_layer else [None]:
      names[m.hf.format(i=i)] = m.hf_shape(cfg)
  return names


_WEIGHT_DTYPES = ("float32", "float16", "bfloat16", "float64")

# Tensors some HF checkpoints carry that hold no parameters (recomputed from the config).
_IGNORABLE_SUFFIXES = (".rotary_emb.inv_freq",)


def validate_source(source: TensorSource, cfg: ModelConfig) -> None:
  """Checks names and shapes of every tensor (headers only) before anything is read or written."""
  expected = expected_hf_names(cfg)
  found = {n for n in source.names() if not n.endswith(_IGNORABLE_SUFFIXES)}
  if cfg.tie_word_embeddings:
    found.discard("lm_head.weight")  # some tied checkpoints still store the (identical) head
  problems = [f"missing tensor {n} (expected shape {expected[n]})" for n in sorted(set(expected) - found)]
  problems += [f"unexpected tensor {n} (shape {source.shape(n)})" for n in sorted(found - set(expected))]
  for n in sorted(set(expected) & found):
    if source.shape(n) != expected[n]:
      problems.append(f"tensor {n}: expected shape {expected[n]}, found {source.shape(n)}")
    if source.dtype(n) not in _WEIGHT_DTYPES:  # an integer tensor would be cast to nonsense weights
      problems.append(f"tensor {n}: expected a float dtype ({', '.join(_WEIGHT_DTYPES)}), found {source.dtype(n)}")
  if problems:
    shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
    raise ConversionError(f"{source.where}: checkpoint does not match its config:\n  " + "\n  ".join(shown))


def params_from_source(source: TensorSource, cfg: ModelConfig, dtype=np.float32, place=None) -> dict:
  """Reads every tensor once into a nested params dict (one copy of the weights).

  `place` (e.g. jax.device_put) is applied to each finished array as soon as it is complete, so the
  staging numpy array is freed before the next one is built: peak memory is the result plus one tensor.
  """
  validate_source(source, cfg)
  params: dict = {}
  for m in mappings(cfg):
    if m.per_layer:
      first = m.to_ours(source.get(m.hf.format(i=0)), cfg)
      out = np.empty((cfg.num_layers,) + first.shape, dtype)
      out[0] = first
      del first
      for i in range(1, cfg.num_layers):
        out[i] = m.to_ours(source.get(m.hf.format(i=i)), cfg)
    else:
      out = np.ascontiguousarray(m.to_ours(source.get(m.hf), cfg), dtype=dtype)
    node = params
    for key in m.ours[:-1]:
      node = node.setdefault(key, {})
    node[m.ours[-1]] = out if place is None else place(out)
    del out
  return params


def hf_tensors_from_params(params: dict, cfg: ModelConfig, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, tensor) pairs, one at a time, from a nested params dict (numpy or jax arrays)."""
  for m in mappings(cfg):
    node = params
    for key in m.ours:
      node = node[key]
    stacked = node
    for i in range(cfg.num_layers) if m.per_layer else [None]:
      w = np.asarray(stacked[i] if m.per_layer else stacked)
      w = np.ascontiguousarray(m.to_hf(w, cfg))
      yield m.hf.format(i=i), (w if dtype is None else w.astype(dtype))


def convert(input_dir, output_dir, *, param_dtype: str = "float32", overwrite: bool = False) -> ModelConfig:
  """HF or Meta LLaMA folder, or GGUF file -> hb_jax model folder, with the tokenizer and its settings
  (tokenizer_config.json, chat template, generation_config.json). A bad input fails before output_dir is
  touched (with overwrite, the model already there stays); a failure while writing leaves no loadable
  half-folder."""
  output_dir = epath.Path(output_dir)
  if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
    raise ConversionError(f"{output_dir}: output exists and is not empty (pass --overwrite)")
  source = open_source(input_dir)
  try:
    _convert_source(source, input_dir, output_dir, param_dtype, overwrite)
  finally:
    source.close()  # a GGUF source removes the tokenizer files it rebuilt
  return dataclasses.replace(source.config, param_dtype=param_dtype)


def _convert_source(source: TensorSource, input_dir, output_dir: epath.Path, param_dtype: str,
                    overwrite: bool) -> None:
  cfg = dataclasses.replace(source.config, param_dtype=param_dtype)
  import jax

  # Everything that can fail on a bad input (names, shapes, dtypes, unreadable tensors) fails here, before
  # the output folder is touched, so a failed --overwrite leaves the model that was there.
  params = params_from_source(source, cfg, dtype=np.dtype(param_dtype) if param_dtype != "bfloat16"
                              else _bf16(), place=jax.device_put)
  created = not output_dir.exists()
  try:
    model_folder.save_model_folder(output_dir, cfg, params, tokenizer_file=source.tokenizer_file,
                                 settings_files=source.settings_files,
                                 extra_json={"converted_from": str(input_dir),
                                             "source_dtype": getattr(source, "torch_dtype", None)},
                                 overwrite=overwrite)
  except BaseException:
    if created:
      model_folder.remove_tree(output_dir)
    else:
      for name in (model_folder.MODEL_JSON, model_folder.PARAMS_DIR):
        model_folder.remove_tree(output_dir / name)
    raise


GENERATION_CONFIG = "generation_config.json"


def _generation_config(model_dir: epath.Path, cfg: ModelConfig) -> dict:
  """The model folder's generation defaults (sampling settings of a chat model, ...) with the end ids of
  model.json, which generation stops at: the model's ids win over a stale copy."""
  path = model_dir / GENERATION_CONFIG
  out = json.loads(path.read_text()) if path.exists() else {}
  if not isinstance(out, dict):
    raise ConversionError(f"{path}: expected a JSON object, found {type(out).__name__}")
  out.update(bos_token_id=cfg.bos_id, eos_token_id=hf_eos_token_id(cfg))
  return out


def _bf16():
  import ml_dtypes

  return ml_dtypes.bfloat16


def export_hf(model_dir, output_dir, *, dtype: str = "float32", max_shard_bytes: int = 5 * 2**30,
              overwrite: bool = False) -> None:
  """hb_jax model folder -> HF folder (config.json + safetensors, sharded with an index when large), with
  the tokenizer, its settings and the generation defaults."""
  from safetensors.numpy import save_file

  from hb_jax.parallel import single_device_mesh

  model_dir, output_dir = epath.Path(model_dir), epath.Path(output_dir)
  if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
    raise ConversionError(f"{output_dir}: output exists and is not empty (pass --overwrite)")
  cfg = model_folder.read_model_config(model_dir)
  params = model_folder.restore_params(model_dir, cfg, single_device_mesh())
  np_dtype = _bf16() if dtype == "bfloat16" else np.dtype(dtype)
  created = not output_dir.exists()
  tmp = output_dir.parent / (output_dir.name + ".partial")
  model_folder.remove_tree(tmp)
  try:
    tmp.mkdir(parents=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, tensor in hf_tensors_from_params(params, cfg, np_dtype):
      if size and size + tensor.nbytes > max_shard_bytes:
        shards.append({})
        size = 0
      shards[-1][name] = tensor
      size += tensor.nbytes
    weight_map = {}
    for k, shard in enumerate(shards):
      fname = "model.safetensors" if len(shards) == 1 else \
          f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, str(tmp / fname), metadata={"format": "pt"})
      weight_map.update({n: fname for n in shard})
    if len(shards) > 1:
      total = sum(t.nbytes for s in shards for t in s.values())
      (tmp / "model.safetensors.index.json").write_text(
          json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (tmp / "config.json").write_text(json.dumps(hf_config_from_model(cfg, dtype), indent=2))
    tok = model_folder.tokenizer_path(model_dir)
    if tok is not None:
      tok.copy(tmp / tok.name)
    for f in model_folder.settings_paths(model_dir):
      if f.name != GENERATION_CONFIG:
        f.copy(tmp / f.name)
    (tmp / GENERATION_CONFIG).write_text(json.dumps(_generation_config(model_dir, cfg), indent=2))
    if output_dir.exists():
      model_folder.remove_tree(output_dir)
    tmp.rename(output_dir)
  except BaseException:
    model_folder.remove_tree(tmp)
    if created:
      model_folder.remove_tree(output_dir)
    raise

"""Hugging Face / Meta LLaMA configs <-> ModelConfig.

HF has two spellings of RoPE settings: the older top-level `rope_theta` + `rope_scaling` (transformers 4.x,
and most checkpoints on the hub), and the newer `rope_parameters` dict (transformers 5). Both are read; the
older one is written, since every transformers version reads it.
"""
from __future__ import annotations

from typing import Any, Mapping

from hb_jax.config import ConfigError, ModelConfig, RopeScaling


def _rope_from_hf(cfg: Mapping[str, Any], where: str) -> tuple[float, RopeScaling | None]:
  params = cfg.get("rope_parameters")
  if params is not None:
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    scaling = params
  else:
    theta = cfg.get("rope_theta", 10000.0)
    scaling = cfg.get("rope_scaling")
  if not scaling:
    return float(theta), None
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind == "default":
    return float(theta), None
  if kind != "llama3":
    raise ConfigError(f"{where}: rope scaling type {kind!r} is not supported (only 'default' and 'llama3')")
  return float(theta), RopeScaling(
      factor=float(scaling["factor"]), low_freq_factor=float(scaling["low_freq_factor"]),
      high_freq_factor=float(scaling["high_freq_factor"]),
      original_max_position_embeddings=int(scaling["original_max_position_embeddings"]))


def _token_ids(value, vocab_size: int, where: str, key: str = "eos_token_id") -> list[int]:
  """`key` as a list of ids (an int or a list of ints; None/absent: []), checked against the vocab."""
  if value is None:
    return []
  ids = value if isinstance(value, list) else [value]
  if not ids:
    raise ConfigError(f"{where}: {key} is an empty list; expected a token id or a non-empty list of them")
  for i in ids:
    if isinstance(i, bool) or not isinstance(i, int):
      raise ConfigError(f"{where}: {key} must be an int or a list of ints, found {value!r}")
    if not 0 <= i < vocab_size:
      raise ConfigError(f"{where}: {key} {i} is outside the vocabulary [0, {vocab_size})")
  return ids


def model_config_from_hf(cfg: Mapping[str, Any], where: str = "config.json", *,
                         generation_config: Mapping[str, Any] | None = None,
                         generation_where: str = "generation_config.json", **overrides) -> ModelConfig:
  """ModelConfig from a HF LlamaConfig dict; refuses architectures this network does not implement.

  End ids: `eos_token_id` may be a list (LLaMA-3.1-Instruct: [128001, 128008, 128009]), in config.json and/or
  generation_config.json (what `transformers` generation stops at). eos_id is config.json's first (else
  generation_config.json's first, else 2); every other id of either list becomes extra_eos_ids, in order.
  """
  model_type = cfg.get("model_type")
  archs = cfg.get("architectures") or []
  if model_type != "llama" and "LlamaForCausalLM" not in archs:
    raise ConfigError(f"{where}: unknown architecture (model_type={model_type!r}, architectures={archs}); "
                      "expected a LLaMA model (model_type 'llama')")
  for flag in ("attention_bias", "mlp_bias"):
    if cfg.get(flag):
      raise ConfigError(f"{where}: {flag}=true is not supported by this LLaMA implementation")
  act = cfg.get("hidden_act", "silu")
  if act != "silu":
    raise ConfigError(f"{where}: hidden_act {act!r} is not supported (expected 'silu')")
  theta, scaling = _rope_from_hf(cfg, where)
  try:
    fields = dict(
        vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
        num_layers=int(cfg["num_hidden_layers"]), num_heads=int(cfg["num_attention_heads"]),
        num_kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
        head_dim=cfg.get("head_dim"), intermediate_size=int(cfg["intermediate_size"]),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)))
  except KeyError as e:
    raise ConfigError(f"{where}: required key {e.args[0]!r} is missing") from e
  fields["bos_id"] = (_token_ids(cfg.get("bos_token_id"), fields["vocab_size"], where, "bos_token_id") or [1])[0]
  eos = _token_ids(cfg.get("eos_token_id"), fields["vocab_size"], where)
  if generation_config is not None:
    eos += _token_ids(generation_config.get("eos_token_id"), fields["vocab_size"], generation_where)
  eos = list(dict.fromkeys(eos)) or [2]
  fields.update(eos_id=eos[0], extra_eos_ids=tuple(eos[1:]))
  fields.update(overrides)
  return ModelConfig(**fields)


def hf_config_from_model(cfg: ModelConfig, torch_dtype: str = "float32") -> dict[str, Any]:
  """A config.json dict that `transformers.LlamaForCausalLM.from_pretrained` reads (4.x and 5.x)."""
  out = {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_position_embeddings,
      "rms_norm_eps": cfg.rms_norm_eps,
      "rope_theta": cfg.rope_theta,
      "rope_scaling": None,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "attention_bias": False,
      "mlp_bias": False,
      "bos_token_id": cfg.bos_id,
      "eos_token_id": hf_eos_token_id(cfg),
      "torch_dtype": torch_dtype,
  }
  if cfg.rope_scaling is not None:
    s = cfg.rope_scaling
    out["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                           "high_freq_factor": s.high_freq_factor,
                           "original_max_position_embeddings": s.original_max_position_embeddings}
  return out


def hf_eos_token_id(cfg: ModelConfig) -> int | list[int]:
  """HF's `eos_token_id`: the id, or the list of every end id when there are extra ones."""
  return list(cfg.eos_ids) if cfg.extra_eos_ids else cfg.eos_id


def model_config_from_meta(params: Mapping[str, Any], vocab_size: int, intermediate_size: int,
                           where: str = "params.json") -> ModelConfig:
  """ModelConfig from Meta's params.json (LLaMA 1/2/3); vocab and FFN width come from the tensors."""
  try:
    dim, n_heads = int(params["dim"]), int(params["n_heads"])
    scaling = None
    if params.get("use_scaled_rope"):
      # Meta's reference code hard-codes these for LLaMA 3.1.
      scaling = RopeScaling(factor=float(params.get("rope_scaling_factor", 8.0)), low_freq_factor=1.0,
                            high_freq_factor=4.0, original_max_position_embeddings=8192)
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=dim, num_layers=int(params["n_layers"]), num_heads=n_heads,
        num_kv_heads=int(params.get("n_kv_heads") or n_heads), intermediate_size=intermediate_size,
        multiple_of=int(params.get("multiple_of", 256)), ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
        rms_norm_eps=float(params.get("norm_eps", 1e-5)), rope_theta=float(params.get("rope_theta", 10000.0)),
        rope_scaling=scaling, max_position_embeddings=int(params.get("max_seq_len", 2048)),
        # LLaMA-3's tiktoken vocabulary puts <|begin_of_text|> / <|end_of_text|> after its 128000 BPE tokens,
        # and Meta's reference generation also stops at <|eom_id|> 128008 (3.1; reserved in 3.0) and
        # <|eot_id|> 128009: a params.json does not say base or chat model, and a base model never emits them.
        # LLaMA 1/2's sentencepiece has BOS 1, EOS 2 (the ModelConfig defaults).
        **(dict(bos_id=128000, eos_id=128001, extra_eos_ids=(128008, 128009)) if vocab_size >= 128010 else {}))
  except KeyError as e:
    raise ConfigError(f"{where}: required key {e.args[0]!r} is missing") from e

"""Named model shapes: the LLaMA family as published, and tiny ones for tests, the demo and benches.

Published shapes follow the released configs (Meta's params.json / HF config.json); the FFN widths are
Meta's `multiple_of` / `ffn_dim_multiplier` rule, asserted in tests.
"""
from __future__ import annotations

import dataclasses

from hb_jax.config import ModelConfig, RopeScaling, ffn_dim

_LLAMA1 = dict(vocab_size=32000, rms_norm_eps=1e-6, rope_theta=1e4, max_position_embeddings=2048)
_LLAMA2 = dict(vocab_size=32000, rms_norm_eps=1e-5, rope_theta=1e4, max_position_embeddings=4096)
_LLAMA3 = dict(vocab_size=128256, rms_norm_eps=1e-5, rope_theta=5e5, max_position_embeddings=8192,
               bos_id=128000, eos_id=128001)

PRESETS: dict[str, ModelConfig] = {
    "llama-7b": ModelConfig(hidden_size=4096, num_layers=32, num_heads=32, **_LLAMA1),
    "llama-13b": ModelConfig(hidden_size=5120, num_layers=40, num_heads=40, **_LLAMA1),
    "llama-33b": ModelConfig(hidden_size=6656, num_layers=60, num_heads=52, **_LLAMA1),
    "llama-65b": ModelConfig(hidden_size=8192, num_layers=80, num_heads=64, **_LLAMA1),
    "llama2-7b": ModelConfig(hidden_size=4096, num_layers=32, num_heads=32, **_LLAMA2),
    "llama2-13b": ModelConfig(hidden_size=5120, num_layers=40, num_heads=40, **_LLAMA2),
    "llama2-70b": ModelConfig(hidden_size=8192, num_layers=80, num_heads=64, num_kv_heads=8,
                              multiple_of=4096, ffn_dim_multiplier=1.3, **_LLAMA2),
    "llama3-8b": ModelConfig(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                             multiple_of=1024, ffn_dim_multiplier=1.3, **_LLAMA3),
    "llama3-70b": ModelConfig(hidden_size=8192, num_layers=80, num_heads=64, num_kv_heads=8,
                              multiple_of=4096, ffn_dim_multiplier=1.3, **_LLAMA3),
    "llama3.1-8b": ModelConfig(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                               multiple_of=1024, ffn_dim_multiplier=1.3, rope_scaling=RopeScaling(),
                               **{**_LLAMA3, "max_position_embeddings": 131072}),
    # Tiny shapes: tests and the CPU demo (vocab set by the demo's own tokenizer).
    # 2,048 positions: configs/tiny.py runs the paper's Table-1 rubric, ~1,460 tokens of its 400-piece vocabulary.
    "tiny": ModelConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        intermediate_size=176, max_position_embeddings=2048),
    "demo": ModelConfig(vocab_size=1024, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                        intermediate_size=352, max_position_embeddings=512),
    # The benches' 58M-parameter shape (vocab 32000, width 512, 8 layers, 8 heads, FFN 1408).
    "bench-58m": ModelConfig(vocab_size=32000, hidden_size=512, num_layers=8, num_heads=8,
                             intermediate_size=1408, max_position_embeddings=1024),
}


def preset(name: str, **overrides) -> ModelConfig:
  """A preset by name, with field overrides (e.g. vocab_size for a tokenizer of another size)."""
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


__all__ = ["PRESETS", "preset", "ffn_dim"]

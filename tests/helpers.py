"""Shared test fixtures: random tiny transformers LLaMA models on disk, and their conversions.

Parity with `transformers.LlamaForCausalLM` (an implementation nobody here wrote) is our proof of
correctness, so every parameter is randomised, norms included: an untouched all-ones norm weight would hide
a transposed or misplaced norm.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

TINY_HF = dict(vocab_size=97, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
               rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)

LLAMA31_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 256}


def make_hf_llama(tmp_path, *, seed: int = 0, spelling: str = "new", name: str = "hf", **overrides):
  """Saves a random tiny LlamaForCausalLM under tmp_path/name; returns (model in eval mode, folder).

  spelling='new' keeps transformers 5's `rope_parameters`; 'old' rewrites config.json with the older
  top-level `rope_theta` + `rope_scaling` keys that most hub checkpoints use.
  """
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  kwargs = dict(TINY_HF)
  kwargs.update(overrides)
  scaling = kwargs.pop("rope_scaling", None)
  if scaling is not None:
    kwargs["rope_scaling"] = dict(scaling)
  torch.manual_seed(seed)
  model = LlamaForCausalLM(LlamaConfig(**kwargs)).eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name_, p in model.named_parameters():
      if name_.endswith("norm.weight"):
        p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(0.15 * torch.randn(p.shape, generator=gen))
  folder = pathlib.Path(tmp_path) / name
  model.save_pretrained(folder, safe_serialization=True)
  if spelling == "old":
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    params = cfg.pop("rope_parameters", None) or {}
    cfg["rope_theta"] = params.pop("rope_theta", kwargs.get("rope_theta", 10000.0))
    cfg["rope_scaling"] = params if params.get("rope_type", "default") != "default" else None
    cfg_path.write_text(json.dumps(cfg, indent=2))
  return model, folder


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  import torch

  with torch.no_grad():
    return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


def random_tokens(vocab: int, batch: int, length: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(3, vocab, size=(batch, length), dtype=np.int32)


def convert_hf(hf_dir, out_dir) -> pathlib.Path:
  """Converts an HF folder to an hb_jax model folder with the public conversion code."""
  from hb_jax.convert import convert

  convert(hf_dir, out_dir)
  return pathlib.Path(out_dir)


def assert_logits_close(ours: np.ndarray, ref: np.ndarray, rel: float = 1e-4) -> float:
  """max |ours - ref| <= rel * max |ref|; returns the achieved ratio for reporting."""
  scale = float(np.max(np.abs(ref)))
  err = float(np.max(np.abs(ours - ref)))
  assert err <= rel * scale, f"max |delta| {err:.3e} > {rel} x max|logit| {scale:.3e}"
  return err / scale


def fake_bucket(monkeypatch, root: pathlib.Path) -> str:
  """Makes `gs://` paths resolve to files under `root` (the working directory becomes `root`), so code
  takes its object-store branch (`records.is_local` is False) on real files; returns 'gs://bucket'."""
  from etils.epath import backend, gpath

  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", backend.os_backend)
  monkeypatch.chdir(root)  # the os backend opens 'gs://bucket/x' as the relative path gs:/bucket/x
  return "gs://bucket"

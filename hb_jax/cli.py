"""Console-script entry points; each wraps the matching file under tools/ or launch/ (same flags)."""
from __future__ import annotations

import argparse
import logging
import sys

from hb_jax.config import ConfigError


def _fail(err: Exception) -> int:
  print(f"error: {err}", file=sys.stderr)
  return 1


def convert_llama_main(argv: list[str] | None = None) -> int:
  from hb_jax.checkpoint import CheckpointError
  from hb_jax.convert import ConversionError, convert

  p = argparse.ArgumentParser(description="Convert a Hugging Face or Meta LLaMA folder to an hb_jax model "
                              "folder (model.json + Orbax params/ + tokenizer).")
  p.add_argument("--input", required=True, help="HF folder (config.json + safetensors) or Meta folder "
                 "(params.json + consolidated.NN.pth); the format is detected")
  p.add_argument("--output", required=True, help="model folder to write (local path or object-store URL)")
  p.add_argument("--param_dtype", default="float32", choices=["float32", "bfloat16", "float16"])
  p.add_argument("--overwrite", action="store_true")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  try:
    cfg = convert(args.input, args.output, param_dtype=args.param_dtype, overwrite=args.overwrite)
  except (ConversionError, ConfigError, CheckpointError, FileNotFoundError, OSError) as e:
    return _fail(e)
  print(f"wrote {args.output}: {cfg.num_params / 1e6:.1f}M params, {cfg.num_layers} layers, "
        f"{cfg.num_heads} heads / {cfg.num_kv_heads} KV heads")
  return 0


def export_hf_main(argv: list[str] | None = None) -> int:
  from hb_jax.checkpoint import CheckpointError
  from hb_jax.convert import ConversionError, export_hf

  p = argparse.ArgumentParser(description="Export an hb_jax model folder to a Hugging Face LLaMA folder.")
  p.add_argument("--input", required=True, help="hb_jax model folder")
  p.add_argument("--output", required=True, help="HF folder to write")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
  p.add_argument("--overwrite", action="store_true")
  args = p.parse_args(argv)
  try:
    export_hf(args.input, args.output, dtype=args.dtype, overwrite=args.overwrite)
  except (ConversionError, ConfigError, CheckpointError, FileNotFoundError, OSError) as e:
    return _fail(e)
  print(f"wrote {args.output}")
  return 0


def run_main(argv: list[str] | None = None) -> int:
  """`hb-run`: the same flags as `python launch/run.py` (hb_jax.pipeline.launch holds the code)."""
  from hb_jax.pipeline import launch
  return launch.run(argv if argv is not None else sys.argv)

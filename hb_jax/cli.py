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


def estimate_main(argv: list[str] | None = None) -> int:
  """`hb-estimate` / tools/estimate.py: FLOPs, bytes and hours per stage of a config at the paper's sizes."""
  import json

  from hb_jax import estimate as est

  p = argparse.ArgumentParser(description="Estimate FLOPs, bytes moved and chip-/wall-hours per pipeline stage "
                              "of a config at the paper's data sizes (see hb_jax/estimate.py).")
  p.add_argument("--config", required=True, help="configs/X.py, optionally with a hardware variant: "
                 "configs/llama65b.py:tpu-v5p")
  p.add_argument("--hardware", default=None, choices=sorted(est.HARDWARE),
                 help="chip kind (default: the config variant's)")
  p.add_argument("--chips", type=int, default=0, help="chips in the job (default: the config variant's "
                 "reference slice, else one host)")
  p.add_argument("--preset", default=None, help="model preset (default: the config's MODEL_PRESET)")
  p.add_argument("--mfu", type=float, default=None, help="training/prefill FLOP utilisation (default 0.4)")
  p.add_argument("--decode_efficiency", type=float, default=None,
                 help="achieved fraction of the decode roofline (default 0.5)")
  p.add_argument("--assume", action="append", default=[], metavar="NAME=VALUE",
                 help="override any assumption (repeatable), e.g. --assume segment_tokens=400")
  p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
  args = p.parse_args(argv)
  try:
    loaded = est.load_config(args.config, args.hardware, args.preset)
    hw = est.hardware(args.hardware or loaded.hardware)
    # Default: the variant's reference slice (another chip kind keeps its chip count), else one host.
    chips = args.chips or loaded.chips or hw.chips_per_host
    overrides = list(args.assume)
    overrides += [f"mfu={args.mfu}"] if args.mfu is not None else []
    overrides += [f"decode_efficiency={args.decode_efficiency}"] if args.decode_efficiency is not None else []
    assumptions = est.Assumptions().with_overrides(overrides)
    result = est.estimate(loaded.pipeline, loaded.model, hw, chips, assumptions,
                          config_name=args.config, model_name=loaded.model_name)
  except (ValueError, KeyError, FileNotFoundError) as e:  # ConfigError is a ValueError; so are bad variants
    return _fail(e)
  if args.json:
    print(json.dumps({**result.to_dict(), "slice": loaded.slice}, sort_keys=True))
  else:
    print(est.format_text(result))
  return 0

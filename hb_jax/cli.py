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


# ------------------------------------------------------------------------------------------------ evaluation
def _eval_errors():
  from hb_jax.checkpoint import CheckpointError
  from hb_jax.data.records import RecordError
  from hb_jax.eval.io import EvalError
  from hb_jax.sample.plan import PlanError
  return (EvalError, RecordError, PlanError, ConfigError, CheckpointError, FileNotFoundError, OSError)


def _print_summary(summary: dict) -> None:
  import json
  print(json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False))


def eval_generate_main(argv: list[str] | None = None) -> int:
  """`hb-eval-generate`: answers for a file of instructions, written in AlpacaEval's model-output format."""
  from hb_jax import api
  from hb_jax.eval import generate

  p = argparse.ArgumentParser(description="Generate answers for instructions (JSONL with 'instruction', or "
                              "AlpacaEval's JSON list) with the paper's decoding; writes AlpacaEval's "
                              "model-output JSON list (instruction, output, generator).")
  p.add_argument("--model", required=True, help="model folder (hb_jax.api.load)")
  p.add_argument("--input", required=True, help="instructions: JSONL or a JSON list")
  p.add_argument("--output", required=True, help="JSON list to write (atomically)")
  p.add_argument("--summary", default=None, help="also write the printed JSON summary here")
  p.add_argument("--tag", default="none", choices=generate.TAGS,
                 help="tag sentence after the instruction: none, seed (AI Assistant), web (web search), both")
  p.add_argument("--generator", default="", help="name in the output's 'generator' (default: model folder name)")
  p.add_argument("--temperature", type=float, default=0.7)
  p.add_argument("--top_p", type=float, default=0.9)
  p.add_argument("--max_new_tokens", type=int, default=512)
  p.add_argument("--batch", type=int, default=32, help="largest decode batch (a power of two)")
  p.add_argument("--seed", type=int, default=0, help="run seed, hashed with each instruction")
  p.add_argument("--max_items", type=int, default=0, help="only the first N instructions (0: all)")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  try:
    cfg = generate.GenerateConfig(tag=args.tag, temperature=args.temperature, top_p=args.top_p,
                                  max_new_tokens=args.max_new_tokens, batch=args.batch, seed=args.seed,
                                  generator=args.generator)
    summary = generate.run(api.load(args.model), args.input, args.output, cfg, max_items=args.max_items,
                           summary_path=args.summary)
  except _eval_errors() as e:
    return _fail(e)
  _print_summary(summary)
  return 0


def judge_main(argv: list[str] | None = None) -> int:
  """`hb-judge`: a local model judges two AlpacaEval output files in both orders."""
  from hb_jax import api
  from hb_jax.eval import generate, judge

  p = argparse.ArgumentParser(description="Pairwise judge: a model folder compares two output files (AlpacaEval "
                              "JSON list or JSONL, matched by instruction) in both orders, from p('1') vs "
                              "p('2'); prints and writes the win rate of A over B.")
  p.add_argument("--model", required=True, help="judge model folder (hb_jax.api.load)")
  p.add_argument("--outputs_a", required=True, help="outputs of model A")
  p.add_argument("--outputs_b", required=True, help="outputs of model B (e.g. the reference)")
  p.add_argument("--output", required=True, help="JSON summary to write")
  p.add_argument("--verdicts", default=None,
                 help="per-item verdicts JSONL (default: the --output path with .verdicts.jsonl)")
  p.add_argument("--tie_margin", type=float, default=0.1,
                 help="smallest |p(A better) - p(B better)| averaged over both orders that is not a tie")
  p.add_argument("--tag", default="none", choices=generate.TAGS, help="tag sentence in the judge's prompt")
  p.add_argument("--batch", type=int, default=16, help="scoring batch")
  p.add_argument("--max_output_tokens", type=int, default=0, help="cut each answer to N tokens (0: whole)")
  p.add_argument("--max_items", type=int, default=0, help="only the first N matched items (0: all)")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  verdicts = args.verdicts
  if verdicts is None:
    base = args.output[:-5] if args.output.endswith(".json") else args.output
    verdicts = base + ".verdicts.jsonl"
  try:
    cfg = judge.JudgeConfig(tie_margin=args.tie_margin, tag=args.tag, batch=args.batch,
                            max_output_tokens=args.max_output_tokens)
    summary = judge.run(api.load(args.model), args.outputs_a, args.outputs_b, args.output, verdicts, cfg,
                        max_items=args.max_items)
  except _eval_errors() as e:
    return _fail(e)
  _print_summary(summary)
  return 0


def eval_mc_main(argv: list[str] | None = None) -> int:
  """`hb-eval-mc`: multiple-choice accuracy from log-likelihoods, zero- or k-shot."""
  from hb_jax import api
  from hb_jax.eval import multiple_choice as mc
  from hb_jax.eval import templates

  p = argparse.ArgumentParser(description="Multiple-choice evaluation (JSONL: question, choices, answer index or "
                              "letter, optional subject) by log-likelihood, summed and per token.")
  p.add_argument("--model", required=True, help="model folder (hb_jax.api.load)")
  p.add_argument("--input", required=True, help="questions JSONL")
  p.add_argument("--output", required=True, help="JSON summary to write")
  p.add_argument("--dev", default=None, help="JSONL of solved examples for the shots (default: the input itself, "
                 "never the question being asked)")
  p.add_argument("--shots", type=int, default=0)
  p.add_argument("--format", default="cloze", choices=templates.MC_FORMATS,
                 help="cloze: score ' {choice}'; letters: list 'A. ...' lines and score ' {letter}'")
  p.add_argument("--batch", type=int, default=16, help="scoring batch")
  p.add_argument("--seed", type=int, default=0, help="seed of the shot ranking within the input")
  p.add_argument("--details", default=None, help="per-question JSONL (predictions, log-likelihoods)")
  p.add_argument("--max_items", type=int, default=0, help="only the first N questions (0: all)")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  try:
    cfg = mc.MCConfig(shots=args.shots, format=args.format, batch=args.batch, seed=args.seed)
    summary = mc.run(api.load(args.model), args.input, args.output, cfg, dev_path=args.dev,
                     details_path=args.details, max_items=args.max_items)
  except _eval_errors() as e:
    return _fail(e)
  _print_summary(summary)
  return 0


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

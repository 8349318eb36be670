"""`hb-preflight` / tools/preflight.py / `launch/run.py --preflight`: hb_jax.cli's conventions (absl flags, a
user's mistake as one line on stderr), plus the launcher's `--config.a.b=value` overrides.

Exit status 0 when every program fits, 1 when one does not (one line per program on stderr, naming the stage,
the program, the bytes it needs and the device's; the report, or its JSON, is printed first), 2 for a mistake
in the command line. libtpu missing for a TPU topology is one line naming the extra that installs it.
"""
from __future__ import annotations

import sys
from typing import Sequence

from absl import flags

from hb_jax import cli

DOC = ("Compile every stage's programs of a run for the TPU slice it will run on (or N simulated CPU devices), "
       "without weights, and report HBM per device, FLOPs and bytes beside hb_jax.estimate's figures; exit 1 "
       "when a program does not fit.")


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(argv without the `--config.a.b=value` / `--config.a.b value` overrides, the overrides as 'a.b=value')."""
  rest, overrides, i = [], [], 0
  argv = list(argv)
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      key = arg[len("--config."):]
      if "=" not in key and i + 1 < len(argv):
        key, i = f"{key}={argv[i + 1]}", i + 1
      overrides.append(key)
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def check_overrides(overrides: Sequence[str]) -> None:
  """A `--config.a.b=` key the config lacks is a command-line mistake (exit 2), named as the launcher names it."""
  from hb_jax.config import ConfigError, check_key
  from hb_jax.pipeline.config import PipelineConfig
  for o in overrides:
    try:
      check_key(PipelineConfig, o.partition("=")[0], where="--config")
    except ConfigError as e:
      raise cli.UsageError(str(e)) from None


def define_flags(fv: flags.FlagValues, *, with_config: bool = True) -> None:
  if with_config:
    flags.DEFINE_string("config", None, "configs/X.py, optionally with a hardware variant: "
                        "configs/llama7b.py:tpu-v5p (overrides: --config.a.b=value, as launch/run.py)",
                        flag_values=fv)
  flags.DEFINE_string("topology", None, "v4-32, v5p-16, v5e-256 (v4/v5p count TensorCores, v5e/v6e chips), the raw "
                      "form v4:2x2x4, or cpu-N for N simulated CPU devices (default: the config variant's slice)",
                      flag_values=fv)
  flags.DEFINE_list("stages", [], "only these stages (e.g. backward,augment); default: every stage of the run",
                    flag_values=fv)
  flags.DEFINE_string("preset", None, "model preset instead of the one the run loads", flag_values=fv)
  flags.DEFINE_bool("json", False, "print one JSON object instead of the table", flag_values=fv)


def run_preflight(spec: str, overrides: Sequence[str], topology: str | None, stages: Sequence[str],
                  preset: str | None, as_json: bool) -> int:
  import json

  from hb_jax.preflight.report import GB, format_text
  from hb_jax.preflight.run import preflight
  model = None
  if preset:
    from hb_jax.model.presets import preset as get_preset
    model = get_preset(preset)
  report = preflight(spec, overrides, topology, model=model, stages=stages or None)
  print(json.dumps(report.to_dict(), sort_keys=True) if as_json else format_text(report), flush=True)
  for m in report.misfits:
    limit = report.chip_hbm_bytes
    print(f"error: {m.stage} {m.program} does not fit: it needs {m.total_bytes:,.0f} bytes "
          f"({m.total_bytes / GB:.2f} GB) per device, a {report.target.device_kind} device of {report.target.name} "
          f"has {limit:,.0f} ({limit / GB:.2f} GB)", file=sys.stderr, flush=True)
  return cli.FAILED if report.misfits else 0


def main(argv: Sequence[str] | None = None) -> int:
  """`hb-preflight` / tools/preflight.py."""
  from hb_jax.preflight.libtpu import MissingLibtpu
  argv, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
  fv = flags.FlagValues()
  define_flags(fv)

  def body(fv) -> int:
    check_overrides(overrides)
    return run_preflight(fv.config, overrides, fv.topology, fv.stages, fv.preset, fv.json)

  return cli.run_command(fv, argv, body, required=("config",), also=(MissingLibtpu, ValueError, KeyError), doc=DOC)

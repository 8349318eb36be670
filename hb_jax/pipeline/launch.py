"""The launcher behind `python launch/run.py` and `hb-run`: flags, distributed init, config, runner.

    python launch/run.py [--config=configs/X.py] [--workdir=DIR] [--stage=NAME] [--restart_from=NAME]
                         [--config.a.b=value ...]

The config file returns an ml_collections ConfigDict (so `--config.curate.k=4` overrides work); it is
validated into hb_jax.pipeline.config.PipelineConfig before anything runs. Default config: configs/demo.py;
default workdir: runs/<config name>.
"""
from __future__ import annotations

import os
import time

from absl import flags
from ml_collections import config_flags

from hb_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "demo.py")

_CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "pipeline config file (configs/*.py)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (local path or object-store URL); default "
                               "runs/<config name>")
_STAGE = flags.DEFINE_string("stage", None, "run only this stage (its upstream stages must be done)")
_RESTART = flags.DEFINE_string("restart_from", None, "redo this stage and every later one")
_FT_DATA = flags.DEFINE_string("finetune_data", None, "--stage=finetune: training JSONL of pairs")
_FT_OUT = flags.DEFINE_string("finetune_output", None, "--stage=finetune: output model folder")
_FT_DIR = flags.DEFINE_enum("finetune_direction", "forward", ["forward", "backward"], "--stage=finetune")
_COORD = flags.DEFINE_string("coordinator_address", "", "multi-process: host:port of process 0")
_NPROC = flags.DEFINE_integer("num_processes", 0, "multi-process: number of processes")
_PID = flags.DEFINE_integer("process_id", -1, "multi-process: this process's index")
_VERBOSE = flags.DEFINE_bool("verbose", False, "show the traceback of a user's mistake too (it prints one line)")
_PREFLIGHT = flags.DEFINE_bool("preflight", False, "compile every stage for --topology and report, run nothing "
                               "(tools/preflight.py; with its --topology, --stages, --preset, --json)")
from hb_jax.preflight.cli import define_flags as _preflight_flags  # noqa: E402

_preflight_flags(flags.FLAGS, with_config=False)


def main(argv) -> int:
  del argv
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
  from hb_jax.config import ConfigError
  from hb_jax.parallel import DistributedConfig, initialize_distributed
  from hb_jax.jobs import Share
  from hb_jax.pipeline import runner, stages
  from hb_jax.pipeline.config import from_file_value
  from hb_jax.pipeline.manifest import Manifest, StageConfigChanged

  if _PREFLIGHT.value:
    return _preflight()
  import jax
  initialize_distributed(DistributedConfig(coordinator_address=_COORD.value, num_processes=_NPROC.value,
                                           process_id=_PID.value))
  share = Share(jax.process_index(), jax.process_count())
  cd = _CONFIG.value
  try:
    cfg = from_file_value(cd, config_flags.get_config_filename(flags.FLAGS["config"]))
  except ConfigError as e:
    return cli.user_mistake(e, cli.USAGE, _VERBOSE.value)
  workdir = _WORKDIR.value or os.path.join("runs", cfg.name)
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)  # Orbax wants absolute checkpoint paths
  t0 = time.time()
  try:
    if _STAGE.value == "finetune":
      if not _FT_DATA.value:
        raise ValueError("--stage=finetune needs --finetune_data=PAIRS.jsonl (and optionally --finetune_output)")
      ctx = stages.Context(cfg, __import__("etils").epath.Path(workdir), Manifest(workdir, share.index == 0), share)
      output = _FT_OUT.value or str(ctx.path("models/finetuned"))
      stages.finetune_one(ctx, _FT_DATA.value, output, _FT_DIR.value)
      if share.index == 0:
        print(f"[hb_jax] finetune: wrote the model folder {output}; {time.time() - t0:.1f}s", flush=True)
    else:
      result = runner.run(cfg, workdir, only=_STAGE.value, restart_from=_RESTART.value, share=share)
      print(f"[hb_jax] {workdir}: ran {result.ran or 'nothing'}; skipped {result.skipped or 'nothing'}; "
            f"{time.time() - t0:.1f}s", flush=True)
  except (StageConfigChanged, ValueError, RuntimeError, FileNotFoundError) as e:  # the stages' user-facing errors
    return cli.user_mistake(e, cli.FAILED, _VERBOSE.value)
  if share.index == 0 and os.path.exists(os.path.join(workdir, "report", "report.md")) and not _STAGE.value:
    print(f"[hb_jax] report: {os.path.join(workdir, 'report', 'report.md')}", flush=True)
  return 0


def _preflight() -> int:
  """`--preflight`: the config file and its --config.a.b overrides as given, compiled by hb_jax.preflight."""
  from hb_jax.preflight.cli import run_preflight
  from hb_jax.preflight.libtpu import MissingLibtpu
  fl = flags.FLAGS
  overrides = [fl[name].serialize()[len("--config."):] for name in fl
               if name.startswith("config.") and fl[name].present]
  spec = config_flags.get_config_filename(fl["config"])
  return cli.guarded(lambda: run_preflight(spec, overrides, fl.topology, fl.stages, fl.preset, fl.json),
                     verbose=_VERBOSE.value, also=(MissingLibtpu, ValueError, KeyError))

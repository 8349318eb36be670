"""Finetune one model on a JSONL of (instruction, output) pairs, from a base model folder to a model folder.

    from hb_jax.config import TrainConfig
    from hb_jax.train.finetune import finetune
    result = finetune(TrainConfig(num_steps=500), "runs/x/models/base", "runs/x/data/seed.jsonl",
                      "runs/x/models/m0", "runs/x/train/m0")

Records are pairs (`instruction`, `output`, optional `source`); direction 'forward' trains
prompt(instruction) -> output, 'backward' trains prompt(output) -> instruction, with the templates of
hb_jax.data.prompts and the tokenizer stored in the base model folder (BOS first, EOS last). Records that
already carry `prompt_tokens`/`response_tokens` are used as they are. Rerunning with the same workdir
resumes from the last complete checkpoint; the output model folder is written only when training
completes (its model.json is the commit marker), so a preempted run leaves no half-written model.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Callable, Mapping, Sequence

import jax
from etils import epath
from jax.sharding import Mesh

from hb_jax import model_folder
from hb_jax.config import TrainConfig
from hb_jax.data import loader
from hb_jax.parallel import TRAIN_RULES, make_mesh, with_overrides
from hb_jax.train import loop

log = logging.getLogger(__name__)
Tokenize = Callable[[Mapping[str, Any]], tuple[Sequence[int], Sequence[int]]]


@dataclasses.dataclass
class FinetuneResult:
  completed: bool  # False: stopped by SIGTERM after checkpointing; rerun to continue
  output_dir: str | None  # the model folder (None unless completed)
  step: int
  num_steps: int
  train_loss: float | None
  val_loss: float | None
  data_stats: dict[str, int]
  batch_size: int
  resumed_from: int | None = None  # the checkpoint step this run continued from (None: from the start)


def pair_tokenizer(tokenizer, direction: str = "forward", tag_mode: str = "source") -> Tokenize:
  """record -> (prompt ids with BOS, response ids with EOS) using hb_jax.data.prompts' templates."""
  from hb_jax.data import prompts

  def tokenize(rec):
    if direction == "forward":
      tag = prompts.tag_for(rec.get("source", "seed"), tag_mode)
      prompt, target = prompts.forward_prompt(rec["instruction"], tag), prompts.forward_target(rec["output"])
    else:
      prompt, target = prompts.backward_prompt(rec["output"]), prompts.backward_target(rec["instruction"])
    return tokenizer.encode(prompt, bos=True), tokenizer.encode(target, eos=True)

  return tokenize


def finetune(cfg: TrainConfig, base_model_dir, train_jsonl, output_dir, workdir, *,
             records: Sequence[Mapping[str, Any]] | None = None, tokenize: Tokenize | None = None,
             mesh: Mesh | None = None, overwrite: bool = False, attention: str | None = None) -> FinetuneResult:
  """Finetunes the model in `base_model_dir` on `train_jsonl` (or `records`); writes `output_dir`.

  workdir holds checkpoints/, metrics.jsonl, data_stats.json. `tokenize` overrides the default
  (tokenizer of the base folder + prompt templates for cfg.direction). `attention` (ModelConfig.attention)
  says how the run computes attention; the folder written does not record it.
  """
  workdir, output_dir = epath.Path(workdir), epath.Path(output_dir)
  if model_folder.is_model_folder(output_dir) and not overwrite:
    raise model_folder.CheckpointError(f"{output_dir}: already a finished model folder (pass overwrite=True)")
  base_cfg = model_folder.read_model_config(base_model_dir)
  mesh = mesh or make_mesh(cfg.mesh)
  tokenizer_file = model_folder.tokenizer_path(base_model_dir)
  if records is None:
    records = loader.read_training_records(train_jsonl)
  needs_tokenizer = any("prompt_tokens" not in r for r in records)
  if tokenize is None and needs_tokenizer:
    if tokenizer_file is None:
      raise model_folder.CheckpointError(
        f"{base_model_dir}: expected a tokenizer file ({' or '.join(model_folder.TOKENIZER_FILES)}) to tokenize "
        f"the text records of {train_jsonl}, found none; copy the base model's tokenizer into that folder "
        "(tools/convert_llama.py does when the source has one), or give records with prompt_tokens and "
        "response_tokens (from Python, tokenize= also works)")
    from hb_jax.tokenizer import load_tokenizer
    tokenize = pair_tokenizer(load_tokenizer(tokenizer_file), cfg.direction, cfg.tag_mode)
  examples = loader.tokenize_records(records, tokenize)
  examples, stats = loader.prepare_examples(examples, cfg.seq_len, cfg.overlong)
  num_val = cfg.val_examples or int(round(cfg.val_fraction * len(examples)))
  train_ex, val_ex = loader.split_validation(examples, num_val, cfg.seed)
  data_stats = {**stats.as_dict(), "train": len(train_ex), "validation": len(val_ex)}
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data_stats.json").write_text(json.dumps(data_stats, indent=2, sort_keys=True))
  if stats.truncated or stats.dropped_too_long or stats.dropped_empty:
    log.warning("finetune data (seq_len %d, overlong=%s): %s", cfg.seq_len, cfg.overlong, data_stats)

  model_cfg = loop.training_model_config(base_cfg, cfg)
  if attention:
    model_cfg = dataclasses.replace(model_cfg, attention=attention)
  rules = with_overrides(TRAIN_RULES, cfg.mesh)
  result = loop.train(model_cfg, cfg, mesh, train_ex, workdir, val_examples=val_ex, rules=rules,
                      init_params=lambda: model_folder.restore_params(base_model_dir, base_cfg, mesh, rules))
  out = None
  if result.completed:
    extra = {"finetuned_from": str(base_model_dir), "train_jsonl": str(train_jsonl), "steps": result.step,
             "direction": cfg.direction, "data": data_stats}
    if cfg.direction == "forward":  # how to prompt it: the tags its training prompts carried
      extra["tag_mode"] = cfg.tag_mode
    params = jax.tree.map(lambda x: x.astype(base_cfg.param_dtype), result.state.params)
    out = str(model_folder.save_model_folder(output_dir, base_cfg, params,
                                           tokenizer_file=tokenizer_file, extra_json=extra, overwrite=True))
  return FinetuneResult(completed=result.completed, output_dir=out, step=result.step,
                        num_steps=result.num_steps, train_loss=result.last_metrics.get("loss"),
                        val_loss=result.val_loss, data_stats=data_stats,
                        batch_size=result.plan.batch_size, resumed_from=result.resumed_from)

"""The training loop: resume or init, step, log, evaluate, checkpoint, stop cleanly on SIGTERM.

`train` works on already-tokenised examples and returns the final TrainState; reading JSONL, tokenising
and writing the model folder are `finetune.py`'s job. Resuming is exact: the checkpoint holds params,
optimizer state, step and base RNG key, the data stream is placed at the restored step (its examples per
step are a function of config and step only), and dropout keys derive from (key, step), so a run killed at
any point and rerun ends bit-identical to an uninterrupted one (same devices, same mesh). A checkpoint also
resumes on another process count or mesh (a resized job): Orbax reshards the state, and each step takes the
same examples, so the run continues as it would have, up to float summation order (and, with dropout, masks
that follow the row layout).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from hb_jax.config import RUN_NEUTRAL_FIELDS, ConfigError, ModelConfig, TrainConfig
from hb_jax.data import loader
from hb_jax.parallel import TRAIN_RULES, Rules
from hb_jax.train import checkpointing, metrics as metrics_lib, step as step_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
  state: step_lib.TrainState
  step: int  # optimizer steps taken (== num_steps when completed)
  num_steps: int
  completed: bool  # False when stopped by preemption
  resumed_from: int | None
  last_metrics: dict[str, float]
  val_loss: float | None
  plan: loader.BatchPlan


def training_model_config(base: ModelConfig, tc: TrainConfig) -> ModelConfig:
  """The base model's config with the run's dropout, compute dtype and remat, and fp32 master weights
  (a bf16 base folder is trained in fp32 and cast back when the model folder is written)."""
  return dataclasses.replace(base, dropout_rate=tc.dropout_rate, dtype=tc.dtype,
                             remat=tc.remat or base.remat, loss_chunk=tc.loss_chunk or base.loss_chunk,
                             param_dtype="float32")


def evaluate(eval_fn, params, examples: Sequence[loader.Example], *, group: int, tc: TrainConfig, mesh: Mesh,
             rules: Rules = TRAIN_RULES) -> float | None:
  """Mean NLL over every response token of `examples` (None without examples)."""
  if not examples:
    return None
  _, batches = loader.eval_batches(examples, group=group, seq_len=tc.seq_len, packed=tc.packing, mesh=mesh,
                                   rules=rules)
  total = count = 0.0
  for batch in batches:
    out = jax.device_get(eval_fn(params, batch))
    total += float(out["loss_sum"])
    count += float(out["loss_tokens"])
  return total / max(count, 1.0)


def _run_fingerprint(cfg: ModelConfig, tc: TrainConfig, num_steps: int, examples) -> dict:
  data = hashlib.sha1()
  for ex in examples:
    data.update(np.asarray(ex["prompt"], np.int32).tobytes() + b"|" + np.asarray(ex["response"], np.int32).tobytes()
                + b";")
  train_cfg = {k: v for k, v in dataclasses.asdict(tc).items() if k not in RUN_NEUTRAL_FIELDS}
  return {"model": json.loads(json.dumps(cfg.fields_dict(), default=str)),
          "train": json.loads(json.dumps(train_cfg, default=str)), "num_steps": num_steps,
          "examples": len(examples), "examples_sha1": data.hexdigest()}


def _check_same_run(workdir, run: dict, resumed_from: int | None, num_steps: int) -> None:
  """Resuming is for the same run: refuses checkpoints of another (other data or settings), which would
  otherwise be continued, or returned as finished, as if they were this run's."""
  path = workdir / "run.json"
  if resumed_from is None:
    if jax.process_index() == 0:
      workdir.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps(run, indent=1, sort_keys=True))
    return
  if resumed_from > num_steps:
    raise RuntimeError(f"{workdir}: its checkpoints are at step {resumed_from}, past this run's {num_steps} steps; "
                       "they belong to another run (use another workdir or remove this one)")
  if not path.exists():
    return  # checkpoints written before runs were fingerprinted
  old = json.loads(path.read_text())
  if old != run:
    diff = sorted(k for k in set(old) | set(run) if old.get(k) != run.get(k))
    detail = [f"{s}.{k}" for s in ("model", "train") if s in diff
              for k in sorted(set(old.get(s, {})) | set(run.get(s, {}))) if old.get(s, {}).get(k) != run.get(s, {}).get(k)]
    raise RuntimeError(f"{workdir}: holds checkpoints of another run (differs in {detail or diff}); resuming would "
                       "continue that run as if it were this one. Use another workdir or remove this one.")


def _check_token_ids(examples, vocab_size: int, what: str) -> None:
  """Token ids outside the vocabulary would train to NaN (an out-of-range gather), silently."""
  for i, ex in enumerate(examples):
    for part in ("prompt", "response"):
      ids = np.asarray(ex[part])
      if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"{what} example {i}: {part} token ids must be in [0, {vocab_size}), found "
                         f"[{ids.min()}, {ids.max()}]")


def train(cfg: ModelConfig, tc: TrainConfig, mesh: Mesh, train_examples: Sequence[loader.Example],
          workdir, *, val_examples: Sequence[loader.Example] = (), num_steps: int | None = None,
          init_params: Callable[[], Any] | None = None, rules: Rules = TRAIN_RULES,
          watcher: checkpointing.PreemptionWatcher | None = None,
          on_step: Callable[[int, dict], None] | None = None) -> TrainResult:
  """Trains `cfg` (already carrying dropout/dtype/remat) on prepared examples.

  workdir gets `checkpoints/` (Orbax steps) and `metrics.jsonl` (+ `tensorboard/`). `init_params()`
  returns the starting params (e.g. a base model restored with TRAIN_RULES); it is only called when no
  checkpoint exists. Without it the model is initialised from tc.seed.
  """
  from etils import epath

  workdir = epath.Path(workdir)
  n = len(train_examples)
  batch_size = tc.examples_per_step(n)
  num_steps = num_steps or tc.steps_for(n)
  _check_token_ids(train_examples, cfg.vocab_size, "training")
  _check_token_ids(val_examples, cfg.vocab_size, "validation")
  if tc.warmup_steps and tc.warmup_steps >= num_steps:
    raise ConfigError(f"train.warmup_steps ({tc.warmup_steps}) must be below the number of steps ({num_steps}): "
                      "the learning rate would never reach train.learning_rate")
  plan = loader.plan_batches([loader.num_slots(e) for e in train_examples], batch_size=batch_size,
                             micro_batches=tc.micro_batches, seq_len=tc.seq_len, packed=tc.packing,
                             num_steps=num_steps, seed=tc.seed, mesh=mesh, rules=rules,
                             rows=tc.rows_per_micro_batch)
  data = loader.TrainData(train_examples, plan, seed=tc.seed, mesh=mesh, rules=rules)
  tx, schedule = step_lib.make_optimizer(tc, num_steps)
  step_fn = step_lib.jit_train_step(cfg, tx, schedule, mesh, rules)
  eval_fn = step_lib.jit_eval_step(cfg, mesh, rules)
  ckpt = checkpointing.TrainCheckpointer(workdir / "checkpoints", save_every=tc.checkpoint_every,
                                         keep=tc.keep_checkpoints, async_save=tc.async_checkpointing)
  own_watcher = watcher is None
  watcher = watcher or checkpointing.PreemptionWatcher()
  writer = metrics_lib.MetricsWriter(workdir, tensorboard=tc.tensorboard)
  peak = metrics_lib.peak_flops_per_device(tc.peak_flops_per_device) * mesh.size
  throughput = metrics_lib.Throughput(cfg, peak)
  eval_group = max(1, plan.local_examples // plan.micro_batches)

  try:
    with jax.set_mesh(mesh):
      resumed_from = ckpt.latest_step()
      run = _run_fingerprint(cfg, tc, num_steps, train_examples)
      _check_same_run(workdir, run, resumed_from, num_steps)
      if resumed_from is not None:
        state = ckpt.restore(resumed_from, step_lib.abstract_state(cfg, tx, mesh, rules), data.iterator)
        log.info("resumed from step %d of %d", resumed_from, num_steps)
        written_by = ckpt.saved_process_count(resumed_from)
        if written_by not in (None, jax.process_count()):
          log.warning("resumed step %d, written by %d processes, on %d: the same examples per step, not "
                      "bit-identical to an unresized run (summation order; dropout masks follow the row layout)",
                      resumed_from, written_by, jax.process_count())
      else:
        # The restored base is only passed through: held here, a bf16 folder's params would stay in HBM beside
        # their fp32 copy for the whole run (2 bytes per parameter per shard).
        state = step_lib.init_state(cfg, tx, mesh, seed=tc.seed, rules=rules,
                                    params=None if init_params is None else init_params())
      step = int(jax.device_get(state.step))
      if step != (resumed_from or 0):
        raise RuntimeError(f"checkpoint step {resumed_from} holds state.step {step}")
      writer.write(step, {"event": "start", "num_steps": num_steps, "batch_size": batch_size,
                          "micro_batches": plan.micro_batches, "rows_per_micro_batch": plan.rows,
                          "seq_len": plan.seq_len, "packed": plan.packed, "train_examples": n,
                          "val_examples": len(val_examples), "resumed_from": resumed_from or 0})
      bar = tqdm(total=num_steps, initial=step, disable=not (tc.progress_bar and jax.process_index() == 0),
                 desc="train", dynamic_ncols=True)
      window: list[dict] = []
      last: dict[str, float] = {}
      val_loss = None
      completed = True
      compile_step_in_window = True  # the first step includes compilation: its loss counts, its time not
      while step < num_steps:
        state, m = step_fn(state, data.next())
        step += 1
        window.append(m)
        if step == (resumed_from or 0) + 1:
          jax.block_until_ready(m)
          throughput.reset()
        ckpt.save(step, state, data.iterator)
        log_now = step % tc.log_every == 0 or step == num_steps
        if log_now and window:
          host = jax.device_get(window)
          timed = host[1:] if compile_step_in_window else host
          for w in timed:
            throughput.add(float(w["tokens"]), float(w["attention_pairs"]))
          compile_step_in_window = False
          rates = throughput.report()
          if not np.isfinite(float(host[-1]["loss"])):
            raise FloatingPointError(f"{workdir}: training loss is {float(host[-1]['loss'])} at step {step}; "
                                     "checkpoints from here on hold non-finite values (lower the learning rate "
                                     "or check the data), resume from an earlier one")
          last = {"loss": float(host[-1]["loss"]), "grad_norm": float(host[-1]["grad_norm"]),
                  "lr": float(host[-1]["lr"]),
                  "loss_avg": float(np.mean([float(w["loss"]) for w in host])), **(rates if timed else {})}
          window = []
          writer.write(step, last)
          bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
          if on_step is not None:
            on_step(step, last)
        if val_examples and ((tc.eval_every and step % tc.eval_every == 0) or step == num_steps):
          t_eval = time.perf_counter()
          val_loss = evaluate(eval_fn, state.params, val_examples, group=eval_group, tc=tc, mesh=mesh,
                              rules=rules)
          writer.write(step, {"val_loss": val_loss})
          throughput.exclude(time.perf_counter() - t_eval)  # steps not yet reported keep their own time
        bar.update(1)
        if step < num_steps and watcher.should_stop(step):
          log.warning("preempted: checkpointing step %d and stopping", step)
          ckpt.save(step, state, data.iterator, force=True)
          writer.write(step, {"event": "preempted"})
          completed = False
          break
      bar.close()
      if completed:
        ckpt.save(step, state, data.iterator, force=True)
        writer.write(step, {"event": "end", **last, **({"val_loss": val_loss} if val_loss is not None else {})})
      ckpt.wait()
  finally:
    ckpt.close()
    writer.close()
    if own_watcher:
      watcher.close()
  return TrainResult(state=state, step=step, num_steps=num_steps, completed=completed,
                     resumed_from=resumed_from, last_metrics=last, val_loss=val_loss, plan=plan)

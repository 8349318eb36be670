"""Supervised finetuning batches: (prompt, response) token pairs -> fixed-shape, loss-masked arrays.

One example is `prompt + response` (token ids, BOS/EOS already placed by the caller's tokenize function).
It occupies `len(prompt) + len(response) - 1` slots of a row: slot t holds input token t and target token
t + 1, and the loss mask is 1 exactly where the target is a response token.

Rows are `seq_len` slots. With packing, several examples share a row; each gets its own segment id (1, 2,
...) and positions restarting at 0, so the model's masking rule (same segment, key not after query) keeps
them apart and every per-token loss equals the one of the plain padded layout (one example per row).

Exact batch size: a step consumes exactly `batch_size` examples. Each process takes its shard of a seeded
shuffle, groups `batch_size / process_count` examples, splits the group into `micro_batches` equal parts
and packs each part into a fixed number of rows (planned once over the whole run, so shapes never change
and nothing spills into the next step). Empty rows are padding (segment 0, mask 0).

Too-long examples (rule stated once, counted in `PrepStats`): an example needs
`len(prompt) + len(response) <= seq_len + 1`. With overlong='truncate' the response is cut at the end to
fit, and examples whose prompt leaves no room for a single response token are dropped; with
overlong='drop' every too-long example is dropped. Examples with an empty response are dropped (no loss).

The pipeline is grain's: `MapDataset.source(range(n)).shuffle(seed).repeat()` (a fresh permutation per
epoch), `[process::process_count]`, `.batch()`, `.map(pack)`. Step s takes positions s*B..(s+1)*B-1 of the
shuffled stream whatever the process count, so the iterator's position is the step, and a resume seeks it
there (hb_jax.train.checkpointing.seek_data), on any number of processes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hb_jax.data import records
from hb_jax.parallel import TRAIN_RULES, Rules, logical_to_spec

# An example: a dict with int32 arrays 'prompt' and 'response'.
Example = dict[str, np.ndarray]
FIELDS = ("inputs", "targets", "loss_mask", "positions", "segment_ids")


class PackingError(ValueError):
  """A group of examples does not fit in the planned number of rows."""


@dataclasses.dataclass
class PrepStats:
  """What `prepare_examples` did to the raw examples (reported by training)."""
  total: int = 0
  kept: int = 0
  truncated: int = 0
  dropped_too_long: int = 0
  dropped_empty: int = 0

  def as_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)


def example(prompt: Sequence[int], response: Sequence[int]) -> Example:
  return {"prompt": np.asarray(prompt, np.int32).reshape(-1),
          "response": np.asarray(response, np.int32).reshape(-1)}


def num_slots(ex: Example) -> int:
  """Row slots an example occupies (inputs are the sequence minus its last token)."""
  return len(ex["prompt"]) + len(ex["response"]) - 1


def prepare_examples(examples: Iterable[Example | tuple[Sequence[int], Sequence[int]]], seq_len: int,
                     overlong: str = "truncate") -> tuple[list[Example], PrepStats]:
  """Applies the too-long / empty rules of the module docstring; returns kept examples and counts."""
  if overlong not in ("truncate", "drop"):
    raise ValueError(f"overlong must be 'truncate' or 'drop', found {overlong!r}")
  stats, kept = PrepStats(), []
  for ex in examples:
    if not isinstance(ex, Mapping):
      ex = example(*ex)
    stats.total += 1
    prompt, response = ex["prompt"], ex["response"]
    if len(response) == 0 or len(prompt) + len(response) < 2:  # nothing to predict, or no input to predict from
      stats.dropped_empty += 1
      continue
    room = seq_len + 1 - len(prompt)  # response tokens that fit
    if len(response) > room:
      if overlong == "drop" or room < 1:
        stats.dropped_too_long += 1
        continue
      response = response[:room]
      stats.truncated += 1
    kept.append({"prompt": prompt, "response": response})
  stats.kept = len(kept)
  return kept, stats


def assign_rows(lengths: Sequence[int], seq_len: int, packed: bool) -> list[int]:
  """Row index for each example: first-fit-decreasing (ties by input order) when packed, else one each.

  Deterministic: the same lengths always give the same layout.
  """
  if not packed:
    return list(range(len(lengths)))
  order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
  free: list[int] = []
  rows = [0] * len(lengths)
  for i in order:
    for r, room in enumerate(free):
      if lengths[i] <= room:
        free[r] -= lengths[i]
        rows[i] = r
        break
    else:
      free.append(seq_len - lengths[i])
      rows[i] = len(free) - 1
  return rows


def rows_needed(lengths: Sequence[int], seq_len: int, packed: bool) -> int:
  return max(assign_rows(lengths, seq_len, packed), default=-1) + 1


def pack(examples: Sequence[Example], num_rows: int, seq_len: int, packed: bool = True) -> dict[str, np.ndarray]:
  """Lays examples into `num_rows` rows of `seq_len` slots: inputs, targets, loss_mask (float32),
  positions and segment_ids, each [num_rows, seq_len]. Unused slots are padding (segment 0, mask 0)."""
  lengths = [num_slots(ex) for ex in examples]
  if any(n > seq_len or n < 1 for n in lengths):
    raise PackingError(f"pack: example slot counts must be in [1, {seq_len}], found {lengths}; "
                       "run prepare_examples first")
  rows = assign_rows(lengths, seq_len, packed)
  if rows and max(rows) >= num_rows:
    raise PackingError(f"pack: {len(examples)} examples need {max(rows) + 1} rows of {seq_len}, "
                       f"only {num_rows} are planned (lengths {lengths})")
  out = {name: np.zeros((num_rows, seq_len), np.float32 if name == "loss_mask" else np.int32)
         for name in FIELDS}
  fill = [0] * num_rows
  for i, ex in enumerate(examples):  # input order within a row: segment ids follow it
    r, n = rows[i], lengths[i]
    seq = np.concatenate([ex["prompt"], ex["response"]])
    s = slice(fill[r], fill[r] + n)
    out["inputs"][r, s] = seq[:-1]
    out["targets"][r, s] = seq[1:]
    out["loss_mask"][r, s] = (np.arange(1, n + 1) >= len(ex["prompt"])).astype(np.float32)
    out["positions"][r, s] = np.arange(n)
    out["segment_ids"][r, s] = int(out["segment_ids"][r].max()) + 1
    fill[r] += n
  return out


def pack_micro_batches(examples: Sequence[Example], micro_batches: int, rows: int, seq_len: int,
                       packed: bool) -> dict[str, np.ndarray]:
  """A process's share of one step: `micro_batches` equal parts, each packed -> [micro, rows, seq_len]."""
  if len(examples) % micro_batches:
    raise ValueError(f"{len(examples)} examples do not split into {micro_batches} micro-batches")
  size = len(examples) // micro_batches
  parts = [pack(examples[i * size:(i + 1) * size], rows, seq_len, packed) for i in range(micro_batches)]
  return {k: np.stack([p[k] for p in parts]) for k in FIELDS}


# ---------------------------------------------------------------- splitting and reading


def split_validation(examples: Sequence[Example], num_val: int, seed: int) -> tuple[list[Example], list[Example]]:
  """A seeded held-out split: (train, validation); validation keeps the original relative order."""
  if num_val <= 0:
    return list(examples), []
  if num_val >= len(examples):
    raise ValueError(f"validation split of {num_val} leaves no training examples out of {len(examples)}")
  perm = np.random.default_rng(seed).permutation(len(examples))
  val_idx = set(perm[:num_val].tolist())
  train = [ex for i, ex in enumerate(examples) if i not in val_idx]
  val = [ex for i, ex in enumerate(examples) if i in val_idx]
  return train, val


def read_training_records(path) -> list[dict[str, Any]]:
  """Training records from a JSONL file: text pairs (`instruction`, `output`: non-empty strings) or
  pre-tokenised ones (`prompt_tokens`, `response_tokens`: lists of ints). The first bad line raises
  RecordError naming file:line, before any training starts."""
  out = []
  for lineno, rec in records.iter_jsonl(path):
    problem = _training_record_problem(rec)
    if problem is not None:
      raise records.RecordError(f"{path}:{lineno}: {problem}")
    out.append(rec)
  return out


def _training_record_problem(rec: dict) -> str | None:
  if "prompt_tokens" in rec or "response_tokens" in rec:
    for key in ("prompt_tokens", "response_tokens"):
      value = rec.get(key)
      if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return f"expected {key!r} to be a list of token ids, found {type(value).__name__}"
    return None
  return records.check_record(rec, ("instruction", "output"))


def tokenize_records(records: Iterable[Mapping[str, Any]],
                     tokenize: Callable[[Mapping[str, Any]], tuple[Sequence[int], Sequence[int]]] | None
                     ) -> list[Example]:
  """Records -> examples. Records that carry `prompt_tokens` and `response_tokens` are used as they are;
  the rest go through `tokenize(record) -> (prompt ids, response ids)`."""
  out = []
  for i, rec in enumerate(records):
    if "prompt_tokens" in rec and "response_tokens" in rec:
      out.append(example(rec["prompt_tokens"], rec["response_tokens"]))
    elif tokenize is None:
      raise ValueError(f"record {i} (id {rec.get('id')!r}) has no prompt_tokens/response_tokens and no "
                       "tokenize function was given")
    else:
      out.append(example(*tokenize(rec)))
  return out


# ---------------------------------------------------------------- the grain pipeline


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """Static shapes of one step: global [micro_batches, rows, seq_len] arrays, `batch_size` examples."""
  batch_size: int  # examples per step (global)
  micro_batches: int
  rows: int  # rows per micro-batch (global)
  seq_len: int
  packed: bool
  process_count: int

  @property
  def local_examples(self) -> int:
    return self.batch_size // self.process_count

  @property
  def local_rows(self) -> int:
    return self.rows // self.process_count


def _batch_ways(mesh: Mesh, rules: Rules) -> int:
  spec = logical_to_spec(("batch",), None, rules, dict(mesh.shape))
  axes = () if spec[0] is None else (spec[0],) if isinstance(spec[0], str) else spec[0]
  return math.prod(mesh.shape[a] for a in axes)


def _index_dataset(n: int, seed: int, process_index: int, process_count: int, per_process: int):
  """Example indices of each step for one process: seeded per-epoch shuffle, sharded, grouped."""
  if n == 0:
    raise ValueError("no training examples left after preparation")
  ds = grain.MapDataset.source(np.arange(n, dtype=np.int64)).shuffle(seed=seed).repeat(None)
  return ds[process_index::process_count].batch(per_process, drop_remainder=True)


def plan_batches(lengths: Sequence[int], *, batch_size: int, micro_batches: int, seq_len: int, packed: bool,
                 num_steps: int, seed: int, mesh: Mesh, rules: Rules = TRAIN_RULES, rows: int = 0,
                 process_count: int | None = None) -> BatchPlan:
  """Checks divisibility and fixes the rows per micro-batch: `rows` if given, else the most any step of
  the run needs (over every process's shard, computed locally from lengths only), rounded up so the
  batch axis splits evenly over the mesh's data axes. Given `rows` too few for some step (e.g. a job
  resized onto fewer processes, each packing a larger share) is refused here, naming the step, rather
  than when training reaches it."""
  process_count = jax.process_count() if process_count is None else process_count
  if batch_size % (process_count * micro_batches):
    raise ValueError(f"batch_size {batch_size} must be divisible by process_count ({process_count}) x "
                     f"micro_batches ({micro_batches})")
  per_process = batch_size // process_count
  part = per_process // micro_batches
  if not packed:
    need_local, worst_step = part, 0
  else:
    need_local, worst_step = 1, 0
    for p in range(process_count):
      ds = _index_dataset(len(lengths), seed, p, process_count, per_process)
      for step in range(num_steps):
        idx = ds[step]
        for m in range(micro_batches):
          need = rows_needed([lengths[i] for i in idx[m * part:(m + 1) * part]], seq_len, True)
          if need > need_local:
            need_local, worst_step = need, step
  multiple = math.lcm(_batch_ways(mesh, rules), process_count)
  if rows > 0:
    rows = -(-rows // multiple) * multiple
    if rows // process_count < need_local:
      raise PackingError(
        f"rows_per_micro_batch {rows} ({rows // process_count} per process on {process_count}) is too few: "
        f"step {worst_step + 1} packs its examples into {need_local} rows of {seq_len} per process; set "
        f"rows_per_micro_batch >= {need_local * process_count}, or 0 to plan it from the data")
  else:
    rows = -(-(need_local * process_count) // multiple) * multiple
  return BatchPlan(batch_size, micro_batches, rows, seq_len, packed, process_count)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules = TRAIN_RULES) -> dict[str, jax.Array]:
  """Per-process [micro, rows_local, T] arrays -> global arrays, rows split over the data axes."""
  spec = logical_to_spec((None, "batch", None), None, rules, dict(mesh.shape))
  sharding = NamedSharding(mesh, spec)
  out = {}
  for k, v in local.items():
    shape = (v.shape[0], v.shape[1] * jax.process_count(), v.shape[2])
    out[k] = jax.make_array_from_process_local_data(sharding, v, shape)
  return out


class TrainData:
  """The training stream: `next()` gives one step's global batch; `iterator` is placed at a resumed step."""

  def __init__(self, examples: Sequence[Example], plan: BatchPlan, *, seed: int, mesh: Mesh,
               rules: Rules = TRAIN_RULES, process_index: int | None = None):
    self.examples = list(examples)
    self.plan = plan
    self.mesh, self.rules = mesh, rules
    process_index = jax.process_index() if process_index is None else process_index
    plan_ = plan

    def to_arrays(idx):
      group = [self.examples[i] for i in idx]
      return pack_micro_batches(group, plan_.micro_batches, plan_.local_rows, plan_.seq_len, plan_.packed)

    ds = _index_dataset(len(self.examples), seed, process_index, plan.process_count, plan.local_examples)
    self.dataset = ds.map(to_arrays)
    self.iterator = iter(self.dataset.to_iter_dataset())

  def next_local(self) -> dict[str, np.ndarray]:
    return next(self.iterator)

  def next(self) -> dict[str, jax.Array]:
    return global_batch(self.next_local(), self.mesh, self.rules)


def eval_batches(examples: Sequence[Example], *, group: int, seq_len: int, packed: bool, mesh: Mesh,
                 rules: Rules = TRAIN_RULES, process_index: int | None = None,
                 process_count: int | None = None) -> tuple[int, Iterator[dict[str, jax.Array]]]:
  """Validation batches in a fixed order, `group` examples per process per batch (the last one padded
  with empty rows), every process yielding the same number of batches. Returns (count, iterator)."""
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  shards = [list(examples[p::pc]) for p in range(pc)]
  num = max(-(-len(s) // group) for s in shards) if examples else 0
  rows = 1
  for s in shards:
    for b in range(num):
      rows = max(rows, rows_needed([num_slots(e) for e in s[b * group:(b + 1) * group]], seq_len, packed))
  multiple = max(1, _batch_ways(mesh, rules) // pc)
  rows = -(-rows // multiple) * multiple

  def gen():
    mine = shards[pi]
    for b in range(num):
      arrays = pack(mine[b * group:(b + 1) * group], rows, seq_len, packed)
      yield global_batch({k: v[None] for k, v in arrays.items()}, mesh, rules)

  return num, gen()

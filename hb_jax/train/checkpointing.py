"""Training-state checkpoints (not model folders: hb_jax/model_folder.py): TrainState + the grain iterator
state, via one Orbax CheckpointManager.

- Async: `save` returns once arrays are copied off the device; files are written in the background.
- Atomic: Orbax writes each step into a temporary folder and finalises it (rename on local disks, a commit
  marker on object stores); `latest_step` only sees finalised steps, so a checkpoint half-written when the
  process was killed is never taken for a good one (Orbax removes such leftovers on the next start).
- Policy: every `save_every` steps, on demand (`force`: the end of training, preemption), keep the last K.
- Resizing: a checkpoint resumes on any process count and mesh. Orbax reshards the TrainState onto the new
  mesh; the data iterator is not restored from its saved per-process state (grain writes one file per
  process, `process_<i>-of-<n>.json`, and reads back only the file of the current layout) but placed at the
  restored step (`seek_data`): the examples of step s are a pure function of the config and s, whatever
  the process count (hb_jax.data.loader). The grain state is still saved, so older code can resume these
  checkpoints on their own layout.
- Preemption: SIGTERM sets a flag; `PreemptionWatcher.should_stop(step)` agrees on it across processes
  (all processes must stop at the same step to write one checkpoint together).
"""
from __future__ import annotations

import logging
import os
import re
import signal
import threading
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

STATE, DATA = "state", "data"


def orbax_path(path) -> epath.Path:
  """A path Orbax accepts: its tensorstore layer refuses relative ones ("Checkpoint path should be absolute"),
  so a local path is made absolute against the current folder; an object-store URL already is."""
  path = os.fspath(path)
  return epath.Path(path if "://" in path else os.path.abspath(path))


class TrainCheckpointer:
  def __init__(self, directory, *, save_every: int, keep: int, async_save: bool = True):
    self.directory = orbax_path(directory)
    self.save_every = save_every
    # A save function, not save_interval_steps: with the latter Orbax also saves the first step of every
    # run (its InitialSavePolicy), a full write of params and optimizer state nobody asked for.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, should_save_fn=lambda step, _last: bool(save_every) and step % save_every == 0,
        enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, DATA))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator, *, force: bool = False) -> bool:
    """Saves if the policy says so (or `force`); returns whether a save was started."""
    if force and step in self.manager.all_steps():  # e.g. the end of training on a save_every multiple
      return False
    return self.manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state),
        DATA: grain.checkpoint.CheckpointSave(data_iterator)}), force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator) -> Any:
    """Restores TrainState (onto `abstract_state`'s shardings, whatever mesh and process count wrote it) and
    places `data_iterator` at the restored step (`seek_data`), not at its saved per-process state, which
    exists only for the process count the checkpoint was written with."""
    args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state)})  # DATA: see seek_data
    state = self.manager.restore(step, args=args)[STATE]
    seek_data(data_iterator, int(jax.device_get(state.step)))
    return state

  def saved_process_count(self, step: int) -> int | None:
    """The process count that wrote `step` (from the names of its per-process data files; None if unknown)."""
    folder = self.directory / str(step) / DATA
    names = [p.name for p in folder.iterdir()] if folder.exists() else []
    counts = {int(m[1]) for m in (re.fullmatch(r"process_\d+-of-(\d+)\.json", n) for n in names) if m}
    return counts.pop() if len(counts) == 1 else None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def seek_data(data_iterator, step: int) -> None:
  """Places the training data iterator (hb_jax.data.loader.TrainData.iterator: a grain MapDataset iterator
  yielding one element per optimizer step) where it stands after `step` steps, on every process."""
  state = data_iterator.get_state()
  if not (isinstance(state, dict) and set(state) == {"next_index"}):
    raise TypeError(f"seek_data: expected a grain MapDataset iterator (state {{'next_index': n}}), found state "
                    f"{state!r} of {type(data_iterator).__name__}")
  data_iterator.set_state({"next_index": step})


class PreemptionWatcher:
  """SIGTERM -> save and stop at a step every process agrees on.

  Single process: the flag alone. Several processes: the flags are all-gathered every `sync_every` steps
  (a tiny host collective), and everyone stops at that step if any process was signalled.
  """

  def __init__(self, sync_every: int = 1, signals=(signal.SIGTERM,)):
    self._flag = threading.Event()
    self.sync_every = max(1, sync_every)
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    logging.warning("received signal %d: will checkpoint and stop at the next agreed step", signum)
    self._flag.set()

  def request(self) -> None:
    """Asks for a stop as a signal would (tests, or a caller's own policy)."""
    self._flag.set()

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self._flag.is_set()
    if step % self.sync_every:
      return False
    flags = multihost_utils.process_allgather(np.array([self._flag.is_set()], np.int32))
    return bool(np.any(flags))

  def close(self) -> None:
    for sig, prev in self._previous.items():
      signal.signal(sig, prev)
    self._previous = {}

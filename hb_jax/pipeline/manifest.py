"""workdir/manifest.json: which stages are done, under which config and inputs, and what they produced.

    {"stages": {"augment": {"state": "done", "config_hash": "...", "config": {...}, "inputs": {...},
                            "outputs": {"augment/candidates.jsonl": "<sha256>"}, ...}}, "format_version": 1}

A stage is *done* only when its entry says so; its outputs are written (atomically) before the entry, so a
crash between the two leaves a stage that reruns and rewrites the same bytes. The manifest itself is one
small JSON object written atomically (object stores: whole upload + commit marker, via records.write_json).
On an object store a rewrite has a moment with no committed manifest (the marker goes before the upload),
so each save there writes `manifest.json.prev` first, and a reader takes it when the manifest is there but
uncommitted: a preemption mid-save costs at most the entry being saved, never the run's record. (A manifest
moved away is a fresh start; the backup is not read then.)
Only process 0 writes it.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Mapping

from etils import epath

from hb_jax.data import records

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BACKUP = MANIFEST + ".prev"


class StageConfigChanged(RuntimeError):
  """A finished stage's config (or inputs) differ from this run's; the message names stage and keys."""


def stable_hash(obj: Any) -> str:
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_hash(path: epath.PathLike) -> str:
  h = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()[:16]


def diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
  """Dotted keys whose values differ between two nested dicts."""
  if isinstance(old, Mapping) and isinstance(new, Mapping):
    out = []
    for k in sorted(set(old) | set(new)):
      key = f"{prefix}.{k}" if prefix else str(k)
      if k not in old or k not in new:
        out.append(key)
      else:
        out.extend(diff_keys(old[k], new[k], key))
    return out
  return [] if old == new else [prefix or "<root>"]


def restrict(old: Any, new: Any) -> Any:
  """`old` less the keys `new` does not have, at every level: a stage's recorded config seen through the
  keys it depends on now (a field a later version stopped hashing, e.g. curate.k for curate_t, is not a
  change)."""
  if isinstance(old, Mapping) and isinstance(new, Mapping):
    return {k: restrict(v, new[k]) for k, v in old.items() if k in new}
  return old


def as_today(recorded: Any, config: Any) -> Any:
  """A stage's recorded config in today's key layout (hb_jax.pipeline.config.upgrade_recorded), seen through
  the keys it depends on now (`restrict`)."""
  from hb_jax.pipeline.config import upgrade_recorded
  if isinstance(recorded, Mapping):
    recorded = upgrade_recorded(recorded, list(config) if isinstance(config, Mapping) else ())
  return restrict(recorded, config)


class Manifest:
  def __init__(self, workdir: epath.PathLike, writer: bool = True):
    self.workdir = epath.Path(workdir)
    self.path = self.workdir / MANIFEST
    self.writer = writer
    self.backup = self.workdir / BACKUP
    self.data: dict[str, Any] = {"format_version": FORMAT_VERSION, "stages": {}}
    source = self.path if records.is_committed(self.path) else None
    if source is None and self.path.exists() and records.is_committed(self.backup):
      source = self.backup  # a save cut between the marker's removal and the upload's end (not a removed file)
    if source is not None:
      try:
        self.data = json.loads(source.read_text())
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RuntimeError(f"{source}: not valid JSON ({e}); restore it from a backup, or move it away to "
                           "start the run over (every stage would run again)") from e
      if not isinstance(self.data, dict) or not isinstance(self.data.get("stages"), dict):
        raise RuntimeError(f"{source}: expected an object with a 'stages' object, found "
                           f"{str(self.data)[:80]}")
      if self.data.get("format_version", 0) > FORMAT_VERSION:
        raise RuntimeError(f"{source}: format_version {self.data['format_version']} is newer than this "
                           f"hb_jax understands ({FORMAT_VERSION})")

  @property
  def stages(self) -> dict[str, dict]:
    return self.data["stages"]

  def entry(self, name: str) -> dict | None:
    return self.stages.get(name)

  def is_done(self, name: str) -> bool:
    e = self.entry(name)
    return bool(e) and e.get("state") == "done"

  def check(self, name: str, config: Any, inputs: Mapping[str, str]) -> str:
    """'new' | 'resume' | 'done'; raises StageConfigChanged for a finished stage whose config or inputs
    changed. A half-done stage with a changed config is 'restart' (its partial outputs are discarded)."""
    e = self.entry(name)
    if not e:
      return "new"
    recorded = as_today(e.get("config", {}), config)
    same_cfg = e.get("config_hash") == stable_hash(config) or recorded == config
    same_inputs = e.get("inputs", {}) == dict(inputs)
    if e.get("state") == "done":
      if same_cfg and same_inputs:
        return "done"
      changed = diff_keys(recorded, config)
      changed_inputs = diff_keys(e.get("inputs", {}), dict(inputs))
      what = []
      if changed:
        what.append(f"config keys changed: {', '.join(changed)}")
      if changed_inputs:
        what.append(f"inputs changed (an upstream stage was redone): {', '.join(changed_inputs)}")
      raise StageConfigChanged(
        f"stage {name!r} is already done under a different setup ({'; '.join(what) or 'hash differs'}) in "
        f"{self.path}. Rerun with --restart_from={name} to redo it and every later stage, or restore the "
        "previous settings.")
    return "resume" if same_cfg and same_inputs else "restart"

  def start(self, name: str, config: Any, inputs: Mapping[str, str]) -> None:
    prev = self.entry(name) or {}
    self.stages[name] = {"state": "running", "config_hash": stable_hash(config), "config": config,
                         "inputs": dict(inputs), "started": prev.get("started", time.time()),
                         "attempts": prev.get("attempts", 0) + 1}
    self.save()

  def finish(self, name: str, outputs: Mapping[str, str], info: Mapping[str, Any] | None = None) -> None:
    e = self.stages[name]
    e.update(state="done", outputs=dict(outputs), finished=time.time(), info=dict(info or {}))
    self.save()

  def forget(self, names) -> None:
    for n in names:
      self.stages.pop(n, None)
    self.save()

  def outputs(self, name: str) -> dict[str, str]:
    e = self.entry(name)
    return dict(e.get("outputs", {})) if e else {}

  def save(self) -> None:
    if not self.writer:
      return
    if not records.is_local(self.path):
      # The same bytes go to the backup first: whichever write a preemption cuts, the other one is whole.
      records.write_json(self.backup, self.data)
    records.write_json(self.path, self.data)

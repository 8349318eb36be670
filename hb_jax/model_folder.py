"""Model folders: `model.json` + `params/` (an Orbax PyTree checkpoint) + the tokenizer file, if any, with
the tokenizer's settings and generation defaults beside it under their Hugging Face names
(`tokenizer_config.json`, `chat_template.jinja`, `generation_config.json`, ...: SETTINGS_FILES).

`model.json` is written last and is the folder's commit marker: a folder without it is incomplete and is
refused by `load`, so a crash mid-write never leaves something that looks like a model. This works the same
on local disks and object stores (no rename needed). Params are stored as a plain nested dict of arrays
(`embed_tokens.embedding`, `layers.self_attn.q_proj.kernel` [layers, embed, heads, head_dim], ...), so any
Orbax user can restore them without hb_jax; `restore_params` reshards onto whatever mesh it is given, with
the shardings hb_jax.parallel gives.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from hb_jax.config import ModelConfig
from hb_jax.parallel import Rules, SERVE_RULES, abstract_params

MODEL_JSON = "model.json"
PARAMS_DIR = "params"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
# What travels with the tokenizer file (special tokens, add_bos_token, chat template, generation defaults),
# read by hb_jax.tokenizer and written back by export; a folder may hold none of them.
SETTINGS_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
                  "generation_config.json")


class CheckpointError(RuntimeError):
  """A model folder is missing, incomplete, or does not match its model.json."""


def is_model_folder(path) -> bool:
  path = epath.Path(path)
  return (path / MODEL_JSON).exists() and (path / PARAMS_DIR).exists()


def read_model_config(path) -> ModelConfig:
  path = epath.Path(path)
  cfg_path = path / MODEL_JSON
  if not cfg_path.exists():
    hint = " (params/ exists: the folder was not finished being written)" if (path / PARAMS_DIR).exists() else ""
    raise CheckpointError(f"{path}: not a model folder, {MODEL_JSON} is missing{hint}")
  return ModelConfig.from_json(cfg_path.read_text(), where=str(cfg_path))


def _pure(params: Any) -> Any:
  """nnx.State or nested dict -> nested dict of arrays."""
  if isinstance(params, nnx.State):
    return nnx.to_pure_dict(params)
  return params


def save_model_folder(path, cfg: ModelConfig, params: Any, *, tokenizer_file=None, settings_files=None,
                      extra_json: dict[str, Any] | None = None, overwrite: bool = False) -> epath.Path:
  """Writes a model folder. `params` is an nnx.State or a nested dict of (numpy or jax) arrays.

  `settings_files`: paths named like SETTINGS_FILES copied beside the tokenizer; default: those that sit
  beside `tokenizer_file` (a finetuned model keeps its base's chat template and special tokens).

  Refuses to write into an existing model folder unless `overwrite`; a stale incomplete folder (no
  model.json) is cleared first. model.json is written only after params/ has been committed.
  """
  path = epath.Path(path)
  if (path / MODEL_JSON).exists() and not overwrite:
    raise CheckpointError(f"{path}: a model folder already exists there (pass overwrite=True)")
  writer = jax.process_index() == 0  # every process saves its shards; one clears, copies and commits
  _sync(f"save_model_folder:check:{path}")  # all have looked before anything is removed
  if writer:
    if (path / MODEL_JSON).exists():
      (path / MODEL_JSON).unlink()
    if (path / PARAMS_DIR).exists():
      (path / PARAMS_DIR).rmtree()
    path.mkdir(parents=True, exist_ok=True)
  _sync(f"save_model_folder:clear:{path}")
  tree = _pure(params)
  # One zarr array per (stacked) parameter rather than an OCDBT database: a model has a dozen arrays, and
  # OCDBT's write path buffered about half a copy of the weights more (measured on an 838 MiB model).
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False))
  checkpointer.save(path / PARAMS_DIR, args=ocp.args.PyTreeSave(tree))
  checkpointer.close()
  src = None if tokenizer_file is None else epath.Path(tokenizer_file)
  meta = cfg.to_dict()
  if extra_json:
    meta["extra"] = extra_json
  if settings_files is None:
    settings = settings_paths(src.parent) if src is not None else []
  else:
    settings = [epath.Path(f) for f in settings_files]
  unknown = [f.name for f in settings if f.name not in SETTINGS_FILES]
  if unknown:
    raise CheckpointError(f"{path}: settings files must be named one of {SETTINGS_FILES}, found {unknown}")
  if writer:
    keep = {f.name for f in settings} | ({src.name} if src is not None else set())
    for name in TOKENIZER_FILES + SETTINGS_FILES:  # left from the model this one replaces: would load with it
      if name not in keep and (path / name).exists():
        (path / name).unlink()
    for f in ([src] if src is not None else []) + settings:
      if not _same_file(f, path / f.name):
        f.copy(path / f.name, overwrite=True)
    (path / MODEL_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True))
  _sync(f"save_model_folder:done:{path}")  # no process goes on to read a folder not yet committed
  return path


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _same_file(a: epath.Path, b: epath.Path) -> bool:
  """Whether two paths name one local file (copying a file onto itself fails)."""
  local = "://" not in os.fspath(a) and "://" not in os.fspath(b)
  return local and b.exists() and os.path.samefile(os.fspath(a), os.fspath(b))


def tokenizer_path(path) -> epath.Path | None:
  path = epath.Path(path)
  for name in TOKENIZER_FILES:
    if (path / name).exists():
      return path / name
  return None


def settings_paths(folder) -> list[epath.Path]:
  """The SETTINGS_FILES present in `folder` (a model folder, or a Hugging Face folder)."""
  folder = epath.Path(folder)
  return [folder / name for name in SETTINGS_FILES if (folder / name).exists()]


def restore_params(path, cfg: ModelConfig, mesh: Mesh, rules: Rules = SERVE_RULES) -> dict[str, Any]:
  """Restores `path/params` as jax arrays laid out for `rules` on `mesh` (resharding as needed).

  The stored tree is checked against the config first, so a mismatch names the tensor, the expected and
  the found shape instead of failing deep inside Orbax.
  """
  path = epath.Path(path)
  checkpointer = ocp.StandardCheckpointer()
  try:
    meta = checkpointer.metadata(path / PARAMS_DIR)
  except (FileNotFoundError, ValueError, OSError) as e:
    raise CheckpointError(f"{path}: {PARAMS_DIR}/ is missing or unreadable: {e}") from e
  item = getattr(meta, "item_metadata", None)
  stored = getattr(item, "tree", None)
  if stored is None:  # this Orbax returns empty metadata, not an error, for a folder it cannot read
    raise CheckpointError(f"{path / PARAMS_DIR}: not a readable Orbax checkpoint (missing, or its _METADATA "
                          "is gone); the model folder is incomplete or damaged")
  check_tree_matches(abstract_params(cfg), stored, where=str(path / PARAMS_DIR))
  restored = checkpointer.restore(path / PARAMS_DIR, abstract_params(cfg, mesh, rules))
  checkpointer.close()
  return restored


def check_tree_matches(expected: dict, found: dict, where: str) -> None:
  """Raises CheckpointError naming missing, extra, and mis-shaped tensors (dotted names)."""
  flat_e = {".".join(map(str, k)): v for k, v in _flatten(expected)}
  flat_f = {".".join(map(str, k)): v for k, v in _flatten(found)}
  problems = []
  for name in sorted(set(flat_e) - set(flat_f)):
    problems.append(f"missing tensor {name} (expected shape {tuple(flat_e[name].shape)})")
  for name in sorted(set(flat_f) - set(flat_e)):
    problems.append(f"unexpected tensor {name} (shape {tuple(flat_f[name].shape)})")
  for name in sorted(set(flat_e) & set(flat_f)):
    if tuple(flat_e[name].shape) != tuple(flat_f[name].shape):
      problems.append(f"tensor {name}: expected shape {tuple(flat_e[name].shape)}, "
                      f"found {tuple(flat_f[name].shape)}")
  if problems:
    raise CheckpointError(f"{where}: params do not match model.json:\n  " + "\n  ".join(problems))


def _flatten(tree: dict, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def remove_tree(path) -> None:
  """Deletes a (possibly partial) output folder; used to leave nothing half-written after a failure."""
  path = epath.Path(path)
  if path.exists():
    if path.is_dir():
      path.rmtree()
    else:
      path.unlink()

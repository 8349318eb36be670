"""README's Python finetune example, run as printed: relative paths, from the folder it names them in."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import pathlib
import re

import jax
import numpy as np
import pytest

from hb_jax import model_folder

from train.common import TINY, tiny_model

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_block(containing: str) -> str:
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  found = [b for b in blocks if containing in b]
  assert len(found) == 1, f"README: expected one python block with {containing!r}, found {len(found)}"
  return found[0]


@pytest.mark.slow  # a whole finetune (compile, 20 steps, checkpoint, model folder): ~20 s on 2 cores
def test_readme_python_finetune_runs_as_printed(tmp_path, monkeypatch):
  code = readme_block("from hb_jax.train.finetune import finetune")
  # What `make demo` leaves at the paths the example names: a base model folder and seed pairs (here a tiny
  # model and pre-tokenised pairs, so no tokenizer is needed).
  monkeypatch.chdir(tmp_path)
  base_cfg = dataclasses.replace(TINY, max_position_embeddings=256)
  model_folder.save_model_folder("runs/demo/models/base", base_cfg, jax.device_get(tiny_model(0)[1]))
  rng = np.random.default_rng(0)
  seed = pathlib.Path("runs/demo/data/seed.jsonl")
  seed.parent.mkdir(parents=True)
  seed.write_text("".join(json.dumps({"prompt_tokens": [1, *rng.integers(3, 128, 6).tolist()],
                                      "response_tokens": [*rng.integers(3, 128, 8).tolist(), 2]}) + "\n"
                          for _ in range(40)))
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(compile(code, "README.md", "exec"), {})
  out = printed.getvalue().split()
  assert out[0] == "runs/ft/m0" and np.isfinite(float(out[1]))
  assert model_folder.is_model_folder("runs/ft/m0") and (tmp_path / "runs/ft/work/checkpoints").is_dir()
  assert model_folder.read_model_config("runs/ft/m0") == base_cfg

"""Every entry point answers a user's mistake in one line: launch/run.py, each tools/*.py and each console
script of pyproject.toml, run as a user runs them (subprocesses). Each case exits non-zero with exactly one
line on stderr, `error: ...`, naming the flag, file:line, key or path, and no traceback; a bug keeps its
traceback, and so does a mistake under --verbose. The processes run four at a time (most wait on imports)."""
from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import tomllib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _tool(name: str) -> list[str]:
  return [sys.executable, str(REPO / "tools" / f"{name}.py")]


def _cases(tmp: pathlib.Path) -> list[tuple[str, list[str], int, list[str]]]:
  """(what, command, exit status, strings the one stderr line must hold)."""
  bad = tmp / "bad.jsonl"  # line 2: a string cut off at the end of the line
  bad.write_text(json.dumps({"instruction": "x", "output": "y"}) + '\n{"instruction": "x", "output": "cut\n')
  site = tmp / "site"  # a mirrored page too short to keep, and its site's settings file (no corpus)
  (site / "_static").mkdir(parents=True)
  (site / "index.html").write_text("<html><body><h1>A title</h1><p>Too short to keep.</p></body></html>")
  (site / "_static" / "documentation_options.json").write_text('{\n  "VERSION": "1.0"\n}\n')
  empty = tmp / "empty"
  empty.mkdir()
  tiny = str(REPO / "configs" / "tiny.py")
  run = [sys.executable, str(REPO / "launch" / "run.py")]
  return [
    ("launch: config key typo", [*run, "--config.trian.seed=1"], 2, ["--config.trian: unknown key",
                                                                      "did you mean --config.train?"]),
    ("launch: field typo", [*run, f"--config={tiny}", "--config.train.seeed=1"], 2,
     ["--config.train.seeed: unknown key", "did you mean --config.train.seed?"]),
    ("launch: renamed key", [*run, f"--config={tiny}", "--config.train.mesh_tensor=2"], 2,
     ["--config.train.mesh_tensor was renamed: set --config.train.mesh.tensor instead"]),
    ("launch: config file", [*run, "--config=configs/tny.py"], 2, ["--config=configs/tny.py", "no file"]),
    ("launch: finetune data", [*run, f"--config={tiny}", "--stage=finetune", f"--workdir={tmp / 'w'}"], 1,
     ["--finetune_data"]),
    ("prepare_seed: input", [*_tool("prepare_seed"), "--input", "nope.jsonl", "--output", "s.jsonl"], 1,
     ["nope.jsonl", "expected an oasst1 export"]),
    ("prepare_seed: JSONL line", [*_tool("prepare_seed"), "--input", str(bad), "--output", "s.jsonl"], 1,
     [f"{bad}:2: expected JSON, found Unterminated string starting at column 32"]),
    ("prepare_corpus: input", [*_tool("prepare_corpus"), "--input", "pages/", "--output", "c.jsonl"], 1, ["'pages/'"]),
    ("prepare_corpus: JSONL line", [*_tool("prepare_corpus"), "--input", str(bad), "--output", "c.jsonl",
                                    "--workers", "1"], 1, [f"{bad}:1: expected a string field 'text' or 'html'"]),
    ("prepare_corpus: nothing kept", [*_tool("prepare_corpus"), "--input", str(site), "--output", "c.jsonl",
                                      "--workers", "1"], 1,
     [f"{site}: expected at least one segment", "'too_short': 1", "'files_skipped_json': 1"]),
    ("train_tokenizer: input", [*_tool("train_tokenizer"), "--input", "text.txt", "--output", "tok"], 1,
     ["text.txt"]),
    ("convert_llama: format", [*_tool("convert_llama"), "--input", str(empty), "--output", "m"], 1,
     [str(empty), "expected config.json"]),
    ("export_hf: model folder", [*_tool("export_hf"), "--input", str(empty), "--output", "hf"], 1,
     [str(empty), "model.json"]),
    ("estimate: variant", [*_tool("estimate"), f"--config={REPO / 'configs' / 'llama7b.py'}:tpu-v9"], 1, ["tpu-v9"]),
    ("eval_generate: model", [*_tool("eval_generate"), "--model", str(empty), "--input", str(bad), "--output",
                              "g.json"], 1, [str(empty), "model.json"]),
    ("judge: missing flag", [*_tool("judge"), "--model", str(empty), "--outputs_a", str(bad), "--output", "j.json"],
     2, ["--outputs_b is required"]),
    ("eval_mc: flag typo", [*_tool("eval_mc"), "--shot=1"], 2, ["'shot'"]),
    ("hb-run", [str(BIN / "hb-run"), "--wrkdir=x"], 2, ["'wrkdir'", "workdir"]),
    ("hb-convert-llama", [str(BIN / "hb-convert-llama")], 2, ["--input is required"]),
    ("hb-export-hf", [str(BIN / "hb-export-hf"), "--input", "a", "--output", "b", "--dtype=int8"], 2,
     ["--dtype=int8", "float32"]),
    ("hb-estimate", [str(BIN / "hb-estimate"), "--config=configs/nope.py"], 1, ["configs/nope.py"]),
    ("hb-eval-generate", [str(BIN / "hb-eval-generate"), "--model=m", "--input=i", "--output=o", "--tag=bogus"],
     2, ["--tag=bogus"]),
    ("hb-judge", [str(BIN / "hb-judge"), "--model", "m", "--outputs_a", "a", "--outputs_b", "b", "--output", "o",
                  "stray"], 2, ["'stray'"]),
    ("preflight: topology", [*_tool("preflight"), f"--config={tiny}", "--topology=v9-8"], 1,
     ["--topology='v9-8'", "expected a TPU slice"]),
    ("hb-preflight", [str(BIN / "hb-preflight"), f"--config={tiny}", "--config.train.seeed=1"], 2,
     ["--config.train.seeed: unknown key", "did you mean --config.train.seed?"]),
    ("hb-eval-mc", [str(BIN / "hb-eval-mc"), "--model", str(empty), "--input", str(bad), "--output", "m.json"], 1,
     [str(empty), "model.json"]),
  ]


def _run(cmd: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def test_every_entry_point_answers_a_mistake_in_one_line_and_a_bug_with_its_traceback(tmp_path):
  cases = _cases(tmp_path)
  # Every tool and every console script is walked (a new one without a case fails here).
  scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
  covered = {pathlib.Path(c[1][1] if c[1][0] == sys.executable else c[1][0]).name for c in cases}
  assert {p.name for p in (REPO / "tools").glob("*.py")} | set(scripts) | {"run.py"} <= covered
  bug = ("import sys, hb_jax.data.seed as seed\n"
         "seed.select_seed = lambda *a, **k: 1 / 0  # a bug, injected\n"
         "from hb_jax.cli import prepare_seed_main\n"
         "sys.exit(prepare_seed_main(['--input', 'x.jsonl', '--output', 'y.jsonl']))")
  extra = {"bug": [sys.executable, "-c", bug],
           "verbose": [*_tool("prepare_seed"), "--input", "nope.jsonl", "--output", "s.jsonl", "--verbose"]}
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    done = {c[0]: pool.submit(_run, c[1], tmp_path) for c in cases}
    done.update({name: pool.submit(_run, cmd, tmp_path) for name, cmd in extra.items()})
    results = {name: f.result() for name, f in done.items()}
  failures = []
  for what, cmd, code, needles in cases:
    p = results[what]
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    if not (p.returncode == code and len(lines) == 1 and lines[0].startswith("error: ")
            and all(n in lines[0] for n in needles) and " at at " not in lines[0]):
      failures.append(f"{what}: exit {p.returncode} (expected {code}), stderr:\n{p.stderr[-1500:]}")
  assert not failures, "\n\n".join(failures)
  for name, error in (("bug", "ZeroDivisionError"), ("verbose", "FileNotFoundError: nope.jsonl")):
    p = results[name]
    assert p.returncode == 1 and "Traceback (most recent call last)" in p.stderr and error in p.stderr, p.stderr


@pytest.mark.parametrize("argv, expected", [
  (["--input", "a", "b", "--output", "o", "--input", "c"], ["--input", "a", "--input", "b", "--output", "o",
                                                            "--input", "c"]),
  (["--input=a", "b", "--lenient", "--input", "c", "d"], ["--input=a", "--input", "b", "--lenient", "--input", "c",
                                                           "--input", "d"]),
  (["--output", "o", "x"], ["--output", "o", "x"]),
])
def test_several_values_after_one_flag_keep_their_order(argv, expected):
  from hb_jax import cli
  assert cli.spread_values(argv, ["input"]) == expected

"""Slow end-to-end tests on configs/tiny.py through `launch/run.py` subprocesses:
  * every stage runs, the report and exports carry the contract's keys and provenance;
  * a run killed with SIGKILL right after a chunk commits, twice, and rerun ends with byte-identical datasets;
  * augment and curate on 2 processes x 4 CPU devices (gloo) give exactly the records of the shared run (1 x 2)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

from tests.pipeline.common import REPO

DATASETS = ("data/seed.jsonl", "data/segments.jsonl", "augment/candidates.jsonl", "curate/iter1/scores.jsonl",
            "curate/iter1/A4.jsonl", "curate/iter1/A5.jsonl", "curate/iter1/train.jsonl",
            "curate/iter2/scores.jsonl", "curate/iter2/A4.jsonl", "curate/iter2/A5.jsonl",
            "curate/iter2/train.jsonl")


# Every launch compiles the same handful of programs (train step, prefill, decode, scoring); a persistent
# compilation cache shared by the subprocesses makes each program compile once per test session.
_XLA_CACHE = tempfile.mkdtemp(prefix="hb_jax_e2e_xla_")


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO, JAX_COMPILATION_CACHE_DIR=_XLA_CACHE,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _launch(workdir, *flags, devices=2, env_extra=None, **popen):
  cmd = [sys.executable, os.path.join(REPO, "launch/run.py"), f"--config={REPO}/configs/tiny.py",
         f"--workdir={workdir}", *flags]
  return subprocess.Popen(cmd, env={**_env(devices), **(env_extra or {})}, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **popen)


def _run(workdir, *flags, devices=2, timeout=900):
  p = _launch(workdir, *flags, devices=devices)
  out, _ = p.communicate(timeout=timeout)
  assert p.returncode == 0, out[-4000:]
  return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("e2e") / "run"
  _run(wd)
  return wd


@pytest.mark.slow
def test_full_run_report_and_provenance(full_run):
  wd = full_run
  summary = json.loads((wd / "report/summary.json").read_text())
  for key in ("base_rate_good", "curation", "methods", "eval", "candidates", "seed", "unparseable_ratings"):
    assert key in summary, key
  assert set(summary["curation"]) == {"1", "2"}
  for e in summary["curation"].values():
    assert {"method", "k", "A4", "A5", "precision", "recall"} <= set(e)
  assert set(summary["eval"]) == {"seed_only", "no_curation", "m1", "m2"}
  assert set(summary["eval_paired"]) == {"m2_vs_seed_only", "m2_vs_no_curation", "m2_vs_m1"}
  for e in summary["eval_paired"].values():
    assert e["wins"] + e["losses"] + e["ties"] == e["items"] > 0 and 0 < e["p_value"] <= 1
  assert 0 < summary["base_rate_good"] < 1
  assert set(summary["methods"]["1"]) == {"generate", "digits", "likelihood"}
  assert summary["methods"]["1"]["generate"]["scored"] == 8  # the configured sample
  md = (wd / "report/report.md").read_text()
  assert "Dataset card" in md and "precision" in md
  for t in (1, 2):
    for line in (wd / f"curate/iter{t}/scores.jsonl").read_text().splitlines():
      r = json.loads(line)
      assert r["method"] == "digits" and r["iteration"] == t and r["rated_by"] == f"models/m{t - 1}"
      assert r["generated_by"] == "models/backward" and r["segment_source"] == "synthetic-web"
  alpaca = json.loads((wd / "report/export/curated.alpaca.json").read_text())
  hf = (wd / "report/export/curated.hf.jsonl").read_text().splitlines()
  assert len(alpaca) == len(hf) > 0 and set(alpaca[0]) == {"instruction", "input", "output"}
  out = _run(wd)  # a rerun does nothing
  assert "ran nothing" in out


def _after_seed(full_run, dest):
  """A copy of the shared run with everything after `seed` forgotten: what a run has done when it reaches
  augment."""
  shutil.copytree(full_run, dest)
  manifest = json.loads((dest / "manifest.json").read_text())
  manifest["stages"] = {k: v for k, v in manifest["stages"].items() if k in ("prepare", "backward", "seed")}
  (dest / "manifest.json").write_text(json.dumps(manifest))
  for d in ("augment", "curate", "evaluate", "report", "models/m1", "models/m2", "models/no_curation", "work/train"):
    shutil.rmtree(dest / d, ignore_errors=True)
  return dest


@pytest.mark.slow
def test_kill9_then_rerun_gives_identical_datasets(full_run, tmp_path):
  """SIGKILL right after a chunk commits (the jobs failpoint), once in augment and once in curate_1's digits
  pass; each killed run is shown unfinished at that point, and the run that finishes writes the shared run's
  bytes."""
  wd = _after_seed(full_run, tmp_path / "killed")
  for kill_at, done_before, parts in (("candidates:0", "seed", "augment/parts"),
                                      ("digits:1", "augment", "curate/iter1/parts")):
    p = _launch(wd, env_extra={"HB_JAX_KILL_AFTER_COMMIT": kill_at})
    out, _ = p.communicate(timeout=900)
    assert p.returncode == -signal.SIGKILL, out[-4000:]
    stages = json.loads((wd / "manifest.json").read_text())["stages"]
    assert stages[done_before]["state"] == "done" and "report" not in stages, stages.keys()
    assert (wd / parts).is_dir() and not (wd / "report").exists()
  _run(wd)
  for rel in DATASETS:
    assert (wd / rel).read_bytes() == (full_run / rel).read_bytes(), rel


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(full_run, tmp_path):
  """augment and curate_1 on 2 processes x 4 CPU devices (gloo) write exactly the records of the shared run on
  1 process x 2 devices: a record's output depends on its id and its chunk, not on who computes it."""
  two = _after_seed(full_run, tmp_path / "two")
  for stage in ("augment", "curate_1"):
    port = _free_port()
    procs = [_launch(two, f"--stage={stage}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                     f"--process_id={i}", devices=4) for i in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, o in zip(procs, outs):
      assert p.returncode == 0, o[-4000:]
  parts = sorted(os.listdir(two / "augment/parts"))
  assert any("-p000of002-" in n for n in parts) and any("-p001of002-" in n for n in parts), parts  # 2 shards
  for rel in ("augment/candidates.jsonl", "curate/iter1/scores_digits.jsonl", "curate/iter1/scores_likelihood.jsonl",
              "curate/iter1/scores_generate.jsonl", "curate/iter1/A4.jsonl"):
    assert (full_run / rel).read_bytes() == (two / rel).read_bytes(), rel

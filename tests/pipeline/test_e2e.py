"""One shared tiny pipeline run (configs/tiny.py through `launch/run.py`, 1 process x 1 CPU device) and every
check that needs a finished or partly finished run, each on a copy of it rather than a run of its own:
  * every stage runs on the paper's path (the Table-1 rubric, `generate` selecting the training data, its
    fallback route), the report and exports carry the contract's keys and provenance;
  * a run killed with SIGKILL right after a chunk commits, twice, and rerun ends with byte-identical datasets;
  * curate_1 on 2 processes (gloo) gives exactly the records of the shared run;
  * the runner: skipping finished stages, refusing a changed config (naming stage and keys), --restart_from,
    resuming a half-done bulk stage to byte-identical outputs, user files as inputs;
  * the ablations train and are evaluated: no curation; a joint forward/backward model without tags;
  * the scaling stage on the run's seed pairs.
The module runs on one test worker (the Makefile distributes whole files), so the run is made once."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

from hb_jax.data import prompts, records
from hb_jax.eval import scaling
from hb_jax.pipeline import curation, runner
from hb_jax.pipeline.manifest import Manifest, StageConfigChanged, file_hash, stable_hash

from tests.pipeline.common import REPO, tiny_config

pytestmark = pytest.mark.slow

DATASETS = ("data/seed.jsonl", "data/segments.jsonl", "augment/candidates.jsonl", "curate/iter1/scores.jsonl",
            "curate/iter1/A4.jsonl", "curate/iter1/A5.jsonl", "curate/iter1/train.jsonl",
            "curate/iter2/scores.jsonl", "curate/iter2/A4.jsonl", "curate/iter2/A5.jsonl",
            "curate/iter2/train.jsonl")
UP_TO_AUGMENT = ("prepare", "backward", "augment")


# Every launch compiles the same handful of programs (train step, prefill, decode, scoring); a persistent
# compilation cache shared by the subprocesses makes each program compile once per test session.
_XLA_CACHE = tempfile.mkdtemp(prefix="hb_jax_e2e_xla_")


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO, JAX_COMPILATION_CACHE_DIR=_XLA_CACHE,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _launch(workdir, *flags, devices=1, env_extra=None, **popen):
  cmd = [sys.executable, os.path.join(REPO, "launch/run.py"), f"--config={REPO}/configs/tiny.py",
         f"--workdir={workdir}", *flags]
  return subprocess.Popen(cmd, env={**_env(devices), **(env_extra or {})}, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **popen)


def _run(workdir, *flags, devices=1, timeout=900):
  p = _launch(workdir, *flags, devices=devices)
  out, _ = p.communicate(timeout=timeout)
  assert p.returncode == 0, out[-4000:]
  return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("e2e") / "run"
  _run(wd)
  return wd


def _trimmed(full_run, dest, keep):
  """A copy of the shared run with every stage after `keep` forgotten and its outputs removed: what a run
  has done when it reaches the next stage."""
  shutil.copytree(full_run, dest)
  manifest = json.loads((dest / "manifest.json").read_text())
  manifest["stages"] = {k: v for k, v in manifest["stages"].items() if k in keep}
  (dest / "manifest.json").write_text(json.dumps(manifest))
  gone = ("curate", "evaluate", "report", "models/m1", "models/m2", "models/no_curation", "work/train")
  if "seed" not in keep:
    gone += ("models/m0",)
  if "augment" not in keep:
    gone += ("augment",)
  for d in gone:
    shutil.rmtree(dest / d, ignore_errors=True)
  return dest


def _after_seed(full_run, dest):
  return _trimmed(full_run, dest, ("prepare", "backward", "seed"))


@pytest.fixture(scope="module")
def augmented(full_run, tmp_path_factory):
  """The shared run as it stood after augment (seed and later undone): the runner tests' starting point."""
  wd = _trimmed(full_run, tmp_path_factory.mktemp("tiny") / "run", UP_TO_AUGMENT)
  return tiny_config(), wd


# ------------------------------------------------------------------------------------------ the shared run
def test_full_run_report_and_provenance(full_run):
  wd = full_run
  summary = json.loads((wd / "report/summary.json").read_text())
  for key in ("base_rate_good", "curation", "methods", "eval", "candidates", "seed", "unparseable_ratings",
              "judging_demos"):
    assert key in summary, key
  assert set(summary["curation"]) == {"1", "2"}
  for e in summary["curation"].values():
    assert {"method", "k", "A4", "A5", "precision", "recall"} <= set(e) and e["method"] == "generate"
  assert set(summary["eval"]) == {"seed_only", "no_curation", "m1", "m2"}
  assert set(summary["eval_paired"]) == {"m2_vs_seed_only", "m2_vs_no_curation", "m2_vs_m1"}
  for e in summary["eval_paired"].values():
    assert e["wins"] + e["losses"] + e["ties"] == e["items"] > 0 and 0 < e["p_value"] <= 1
  assert 0 < summary["base_rate_good"] < 1
  assert summary["judging_demos"] > 0  # the synthetic seed's extra supervision, said in the report
  md = (wd / "report/report.md").read_text()
  assert "Dataset card" in md and "precision" in md and "judging demonstrations" in md
  # The paper's path: generate with the Table-1 rubric selects the training data; no rating is lost
  # (parsed + fallback + none = candidates), and the report counts what its text did not say.
  for t in ("1", "2"):
    methods = summary["methods"][t]
    assert set(methods) == {"generate", "likelihood"}
    for m in methods.values():
      assert m["scored"] == summary["candidates"] and {"precision", "recall", "A4_precision"} <= set(m)
    gen = methods["generate"]
    assert sum(gen["routes"].values()) == summary["candidates"] and gen["routes"]["none"] == 0
    assert summary["unparseable_ratings"]["generate"][t] == gen["routes"]["fallback"] > 0  # 6 tokens: no score line
  assert "ratings by route" in md
  for t in (1, 2):
    scored = [json.loads(l) for l in (wd / f"curate/iter{t}/scores.jsonl").read_text().splitlines()]
    for r in scored:
      assert r["method"] == "generate" and r["iteration"] == t and r["rated_by"] == f"models/m{t - 1}"
      assert r["generated_by"] == "models/backward" and r["segment_source"] == "synthetic-web"
      assert r["route"] in curation.ROUTES and r["rating_text"]
      assert prompts.CURATION_PROMPT_HEADER[:40] not in r["rating_text"]  # the text, not the prompt
    a4 = {json.loads(l)["id"] for l in (wd / f"curate/iter{t}/A4.jsonl").read_text().splitlines()}
    assert a4 == {r["id"] for r in curation.select(scored, 4, "generate")}
  alpaca = json.loads((wd / "report/export/curated.alpaca.json").read_text())
  hf = (wd / "report/export/curated.hf.jsonl").read_text().splitlines()
  assert len(alpaca) == len(hf) > 0 and set(alpaca[0]) == {"instruction", "input", "output"}
  out = _run(wd)  # a rerun does nothing
  assert "ran nothing" in out


def test_kill9_then_rerun_gives_identical_datasets(full_run, tmp_path):
  """SIGKILL right after a chunk commits (the jobs failpoint), once in augment and once in curate_1's
  likelihood pass; each killed run is shown unfinished at that point, and the run that finishes curate_1 writes the shared
  run's bytes (the later stages resume like any other: test_two_processes_match_one and the runner tests)."""
  wd = _after_seed(full_run, tmp_path / "killed")
  for kill_at, done_before, parts in (("candidates:0", "seed", "augment/parts"),
                                      ("likelihood:1", "augment", "curate/iter1/parts")):
    p = _launch(wd, env_extra={"HB_JAX_KILL_AFTER_COMMIT": kill_at})
    out, _ = p.communicate(timeout=900)
    assert p.returncode == -signal.SIGKILL, out[-4000:]
    stages = json.loads((wd / "manifest.json").read_text())["stages"]
    assert stages[done_before]["state"] == "done" and "report" not in stages, stages.keys()
    assert (wd / parts).is_dir() and not (wd / "report").exists()
  _run(wd, "--stage=curate_1")
  for rel in DATASETS[:DATASETS.index("curate/iter1/train.jsonl")]:
    assert (wd / rel).read_bytes() == (full_run / rel).read_bytes(), rel


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(full_run, tmp_path):
  """curate_1 on 2 processes of one CPU device each (gloo) writes exactly the records of the shared run on
  one process: a record's output depends on its id and its chunk, not on who computes it. Its raters cover
  the sampler (generate, as in augment and evaluate), the fallback and the scorer, through the same bulk job
  as every other stage. One device per process, as in the shared run: its programs come from the shared
  compilation cache, and a replica over several local devices is tests/sample/test_sharded.py's and
  tests/test_multiprocess.py's to check."""
  two = _trimmed(full_run, tmp_path / "two", ("prepare", "backward", "augment", "seed"))
  port = _free_port()
  procs = [_launch(two, "--stage=curate_1", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                   f"--process_id={i}", devices=1) for i in range(2)]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-4000:]
  parts = sorted(os.listdir(two / "curate/iter1/parts"))
  assert any("-p000of002-" in n for n in parts) and any("-p001of002-" in n for n in parts), parts  # 2 shards
  for rel in ("curate/iter1/scores_likelihood.jsonl", "curate/iter1/scores_generate.jsonl", "curate/iter1/A4.jsonl"):
    assert (full_run / rel).read_bytes() == (two / rel).read_bytes(), rel


# ------------------------------------------------------------------------------------------------- the runner
def test_finished_stages_are_skipped(augmented):
  cfg, wd = augmented
  before = file_hash(wd / "augment/candidates.jsonl")
  for stage in UP_TO_AUGMENT:
    assert runner.run(cfg, wd, only=stage).skipped == [stage]
  assert file_hash(wd / "augment/candidates.jsonl") == before
  m = Manifest(wd)
  assert all(m.is_done(s) for s in UP_TO_AUGMENT) and not m.is_done("seed")
  with pytest.raises(RuntimeError, match=r"stage 'curate_1' needs \['seed'\]"):
    runner.run(cfg, wd, only="curate_1")


def test_changed_config_is_refused_naming_stage_and_keys(augmented, tmp_path):
  cfg, wd = augmented
  changed = tiny_config(**{"augment.sampling.temperature": 0.5})
  with pytest.raises(StageConfigChanged, match=r"stage 'augment'.*augment\.sampling\.temperature.*--restart_from=augment"):
    runner.run(changed, wd, only="augment")
  # An upstream change is refused at the first stage it touches.
  with pytest.raises(StageConfigChanged, match=r"stage 'backward'.*backward\.num_steps"):
    runner.run(tiny_config(**{"backward.num_steps": 5}), wd, only="backward")
  # --stage alone checks the stages it reads from: augment is unchanged, its backward model is not...
  with pytest.raises(StageConfigChanged, match=r"--stage=augment reads .* stage 'backward'.*backward\.num_steps"
                                               r".*--restart_from=backward"):
    runner.run(tiny_config(**{"backward.num_steps": 5}), wd, only="augment")
  # ... while another layout (how it ran, not what it computed) is accepted: stages on different hardware.
  layout = tiny_config(**{"backward.mesh.tensor": 2, "backward.micro_batches": 2, "backward.log_every": 3,
                          "length_buckets": (64, 256, 1024, 2048), "model.attention": "chunked",
                          "page_size": 64})
  assert runner.run(layout, wd, only="augment").skipped == ["augment"]
  # Tags mark forward data: the backward model (trained alone) does not depend on them. Manifests written
  # before this version recorded ablation.tags for it: the check sees that entry through today's keys.
  old = tmp_path / "old"
  shutil.copytree(wd, old)
  m = json.loads((old / "manifest.json").read_text())
  entry = m["stages"]["backward"]
  assert "ablation.tags" not in entry["config"]
  entry["config"]["ablation.tags"] = True
  entry["config_hash"] = stable_hash(entry["config"])
  (old / "manifest.json").write_text(json.dumps(m))
  untagged = tiny_config(**{"ablation.tags": False, "evaluate.tag_mode": "none"})
  for workdir in (wd, old):
    assert runner.run(untagged, workdir, only="backward").skipped == ["backward"]
  curate = next(s for s in runner.plan(cfg) if s.name == "curate_1")
  assert "k" not in runner._config_subset(cfg, curate.keys, curate.ignore)["curate"]
  assert runner._config_subset(cfg, curate.keys, curate.ignore)["curate"]["method"] == cfg.curate.method


def test_restart_and_resume_reproduce_candidates(augmented, tmp_path):
  cfg, wd = augmented
  reference = (wd / "augment/candidates.jsonl").read_bytes()
  assert reference.count(b"\n") > 0
  copy = tmp_path / "copy"
  shutil.copytree(wd, copy)
  # Simulate a crash in the middle of augment: the stage is 'running', some chunks and the merge are gone.
  m = json.loads((copy / "manifest.json").read_text())
  m["stages"]["augment"]["state"] = "running"
  (copy / "manifest.json").write_text(json.dumps(m))
  parts = sorted((copy / "augment/parts").glob("*.jsonl"))
  assert len(parts) >= 2
  for p in parts[1:]:
    p.unlink()
  (copy / "augment/candidates.jsonl").unlink()
  assert runner.run(cfg, copy, only="augment").ran == ["augment"]
  assert (copy / "augment/candidates.jsonl").read_bytes() == reference
  # --restart_from redoes the stage from scratch under the new config, then the old config is refused.
  changed = tiny_config(**{"augment.sampling.seed": 7})
  res = runner.run(changed, copy, only="augment", restart_from="augment")
  assert res.ran == ["augment"]
  redone = (copy / "augment/candidates.jsonl").read_bytes()
  assert redone != reference  # another sampling seed
  for r in records.read_pairs(copy / "augment/candidates.jsonl"):
    assert r["generated_by"] == "models/backward" and r["source"] == "augmented" and r["segment_id"]
  with pytest.raises(StageConfigChanged, match="augment.sampling.seed"):
    runner.run(cfg, copy, only="augment")


def test_files_inputs_reproduce_the_synthetic_run_and_refuse_repeated_ids(augmented, tmp_path):
  """inputs.kind='files' (a user's seed, segments and base model) on the tiny run's own files gives the same
  candidates; a repeated id is refused at `prepare`, naming both lines."""
  _, wd = augmented
  files = {"inputs.kind": "files", "inputs.seed_jsonl": str(wd / "data/seed.jsonl"),
           "inputs.segments_jsonl": str(wd / "data/segments.jsonl"), "inputs.base_model": str(wd / "models/base")}
  run = tmp_path / "files"
  res = runner.run(tiny_config(**files), run, only="prepare")
  for stage in ("backward", "augment"):
    res = runner.run(tiny_config(**files), run, only=stage)
  assert res.ran == ["augment"]
  assert (run / "augment/candidates.jsonl").read_bytes() == (wd / "augment/candidates.jsonl").read_bytes()
  lines = (wd / "data/segments.jsonl").read_text().splitlines(keepends=True)
  repeated = tmp_path / "segments.jsonl"
  repeated.write_text("".join(lines[:3] + lines[1:2]))
  with pytest.raises(records.RecordError, match=rf"{repeated}:4: duplicate id .* \(first on line 2\)"):
    runner.run(tiny_config(**{**files, "inputs.segments_jsonl": str(repeated)}), tmp_path / "dup", only="prepare")


def test_a_done_stage_reading_a_stage_still_to_do_is_refused_before_anything_runs(augmented, tmp_path):
  """As when more curate.iterations put curate_3/train_3 before a finished evaluate: here augment is done
  and backward is not (its entry gone). The plain run refuses at once, not after redoing backward."""
  cfg, wd = augmented
  copy = tmp_path / "copy"
  shutil.copytree(wd, copy)
  m = json.loads((copy / "manifest.json").read_text())
  del m["stages"]["backward"]
  (copy / "manifest.json").write_text(json.dumps(m))
  with pytest.raises(StageConfigChanged, match=r"stage 'augment' is done but reads \['backward'\].*"
                                               r"--restart_from=augment"):
    runner.run(cfg, copy)
  assert Manifest(copy).entry("backward") is None  # nothing ran


def test_a_refused_restart_deletes_nothing_and_a_corrupt_manifest_is_named(augmented, tmp_path):
  cfg, wd = augmented
  copy = tmp_path / "copy"
  shutil.copytree(wd, copy)
  before = (copy / "augment/candidates.jsonl").read_bytes()
  # backward.num_steps changed, but the restart names augment: backward refuses, and augment keeps its outputs.
  with pytest.raises(StageConfigChanged, match=r"stage 'backward'.*backward\.num_steps"):
    runner.run(tiny_config(**{"backward.num_steps": 5}), copy, restart_from="augment")
  assert (copy / "augment/candidates.jsonl").read_bytes() == before and Manifest(copy).is_done("augment")
  (copy / "manifest.json").write_text('{"stages": {"prepare": ')
  with pytest.raises(RuntimeError, match=r"manifest.json: not valid JSON"):
    runner.run(cfg, copy, only="augment")
  (copy / "manifest.json").write_text("[]")
  with pytest.raises(RuntimeError, match=r"manifest.json: expected an object with a 'stages' object"):
    runner.run(cfg, copy, only="augment")


def test_without_curation_the_run_finishes_and_m1_is_answered_once(full_run, tmp_path):
  """ablation.curation=False: train_1 on all candidates, no curate stages, and no_curation *is* m1, so its
  evaluation is m1's file, not a second generation pass over the held-out set."""
  copy = _trimmed(full_run, tmp_path / "copy", ("prepare", "backward", "augment", "seed"))
  # Its generation keeps a paged KV cache: the pipeline's page_size reaches the evaluate stage's sampler.
  out = _run(copy, "--config.ablation.curation=false", "--config.page_size=16")
  assert "ran ['train_1', 'evaluate', 'report']" in out, out[-3000:]  # prepare..seed: the shared run's
  ev = copy / "evaluate"
  assert (ev / "no_curation.jsonl").read_bytes() == (ev / "m1.jsonl").read_bytes()
  assert (ev / "m1.jsonl").read_text().count("\n") > 0
  assert sorted({p.name.split("-")[0] for p in (ev / "parts").glob("*.jsonl")}) == ["m1", "seed_only"]
  summary = json.loads((copy / "report/summary.json").read_text())
  assert "no_curation" in json.dumps(summary)


def test_joint_model_without_tags_trains_rates_and_is_evaluated(augmented, tmp_path):
  """The paper's other two ablations in one run: one model trained jointly on forward and backward seed
  examples serves as M_yx and M0, and no data carries a tag; it augments, rates, trains m1 and is evaluated.
  Launched like the shared run (its compiled programs are in the shared cache)."""
  _, wd = augmented
  copy = tmp_path / "joint"
  shutil.copytree(wd, copy)
  # One iteration, generate alone: the ablations' paths, not another full run. Shapes the shared run compiled:
  # every held-out item, as there (its 11 make a batch of 16; 6 would make one of 8), and the 6 rows per step
  # the shared run's backward model planned (the joint data would plan its own row count, a new program).
  overrides = {"ablation.joint": True, "ablation.tags": False, "evaluate.tag_mode": "none", "curate.iterations": 1,
               "curate.compare": ("generate",), "ablation.baselines": False, "train.rows_per_micro_batch": 6}
  out = _run(copy, "--restart_from=backward", *(f"--config.{k}={v}" for k, v in overrides.items()))
  assert "ran ['backward', 'augment', 'seed', 'curate_1', 'train_1', 'evaluate', 'report']" in out, out[-3000:]
  joint = [json.loads(l) for l in (copy / "work/data/joint.jsonl").read_text().splitlines()]
  seed = (copy / "data/seed.jsonl").read_text().splitlines()
  assert sorted(r["direction"] for r in joint) == sorted(["backward", "forward"] * len(seed))
  assert not (copy / "models/m0").exists()  # m0 *is* the joint model
  scored = [json.loads(l) for l in (copy / "curate/iter1/scores.jsonl").read_text().splitlines()]
  assert scored and {r["rated_by"] for r in scored} == {"models/backward"}
  for name in ("backward", "m1"):
    assert json.loads((copy / f"models/{name}/model.json").read_text())["extra"]["tag_mode"] == "none"
  summary = json.loads((copy / "report/summary.json").read_text())
  assert set(summary["eval"]) == {"seed_only", "m1"} and all(0 <= v <= 1 for v in summary["eval"].values())
  assert "joint forward+backward model" in (copy / "report/report.md").read_text()


def test_scaling_stage_on_the_shared_run(full_run, tmp_path, capsys):
  """`--stage=scaling` on the shared run's seed pairs (it needs only `prepare`): the fit JSON and PNG,
  nested subsets, finished sizes reused after --restart_from, a changed size list refused."""
  wd = tmp_path / "run"
  shutil.copytree(full_run, wd)
  # Test-only speed (compiling dominates): 128-token rows (the few longer seed pairs are truncated), 8 of them
  # per step whatever N (each shape compiles anew). The held-out set is evaluated as the shared run's evaluate
  # stage does (all 11 items, one batch of 16), so its compiled programs serve.
  overrides = {"train.seq_len": 128, "train.rows_per_micro_batch": 8}
  flags = [f"--config.{k}={v}" for k, v in overrides.items()]
  cfg = tiny_config(**overrides)
  # configs/tiny.py: sizes 4 and 12 of the seed pairs, 2 steps each; the README's command with tiny's config.
  out = _run(wd, "--stage=scaling", *flags)
  assert out.count("trained 2 steps") == 2 and "scaling: w = " in out

  fit = json.loads((wd / "scaling/fit.json").read_text())
  assert [p["n"] for p in fit["points"]] == [4, 12]
  assert {"alpha", "c", "stderr", "stderr_c", "r2", "interval"} <= set(fit["fit"]) and fit["fit"]["dof"] == 0
  assert all(0.0 <= p["score"] <= 100.0 for p in fit["points"])
  assert fit["fit"]["alpha"] == pytest.approx(
    scaling.fit_log_scaling([4, 12], [p["score"] for p in fit["points"]]).alpha)
  assert (wd / "scaling/scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  subsets = {n: [json.loads(l)["id"] for l in (wd / f"scaling/n{n}/train.jsonl").read_text().splitlines()]
             for n in (4, 12)}
  assert subsets[12][:4] == subsets[4] and len(set(subsets[12])) == 12
  for n in (4, 12):
    model_json = json.loads((wd / f"models/scaling/n{n}/model.json").read_text())
    assert model_json["extra"]["steps"] == 2 and (wd / f"scaling/n{n}/heldout.jsonl").exists()

  # A finished stage is skipped whole; a changed size list is refused naming the key.
  assert runner.run(cfg, wd, only="scaling").skipped == ["scaling"]
  more = {"scaling.sizes": (4, 8, 12), "scaling.steps": (2, 2, 2)}
  with pytest.raises(StageConfigChanged, match=r"stage 'scaling'.*scaling\.sizes.*--restart_from=scaling"):
    runner.run(tiny_config(**overrides, **more), wd, only="scaling")
  # --restart_from=scaling removes the fit and redoes the stage, but finished sizes whose spec is unchanged
  # are reused: nothing retrains or re-evaluates, and the refit is the same.
  stamps = {n: (wd / f"models/scaling/n{n}/model.json").stat().st_mtime_ns for n in (4, 12)}
  results = {n: (wd / f"scaling/n{n}/result.json").read_bytes() for n in (4, 12)}
  capsys.readouterr()
  assert runner.run(cfg, wd, only="scaling", restart_from="scaling").ran == ["scaling"]
  assert capsys.readouterr().out.count("(reused)") == 2
  assert {n: (wd / f"models/scaling/n{n}/model.json").stat().st_mtime_ns for n in (4, 12)} == stamps
  assert {n: (wd / f"scaling/n{n}/result.json").read_bytes() for n in (4, 12)} == results
  assert json.loads((wd / "scaling/fit.json").read_text())["fit"] == fit["fit"]
  assert Manifest(wd).is_done("scaling")

"""The runner on the real tiny pipeline: skipping finished stages, refusing a changed config (naming stage and
keys), --restart_from, and resuming a half-done bulk stage to byte-identical outputs."""
import json
import shutil

import pytest

from hb_jax.data import records
from hb_jax.pipeline import runner
from hb_jax.pipeline.manifest import Manifest, StageConfigChanged, file_hash, stable_hash

from tests.pipeline.common import tiny_config

UP_TO_AUGMENT = ("prepare", "backward", "augment")


@pytest.fixture(scope="module")
def augmented(tmp_path_factory):
  wd = tmp_path_factory.mktemp("tiny") / "run"
  cfg = tiny_config()
  for stage in UP_TO_AUGMENT:
    res = runner.run(cfg, wd, only=stage)
    assert res.ran == [stage]
  return cfg, wd


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
  layout = tiny_config(**{"backward.mesh.tensor": 2, "backward.micro_batches": 2, "backward.log_every": 3})
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


@pytest.mark.slow
def test_without_curation_the_run_finishes_and_m1_is_answered_once(augmented, tmp_path):
  """ablation.curation=False: train_1 on all candidates, no curate stages, and no_curation *is* m1, so its
  evaluation is m1's file, not a second generation pass over the held-out set."""
  _, wd = augmented
  copy = tmp_path / "copy"
  shutil.copytree(wd, copy)
  res = runner.run(tiny_config(**{"ablation.curation": False}), copy)
  assert res.ran == ["seed", "train_1", "evaluate", "report"]
  ev = copy / "evaluate"
  assert (ev / "no_curation.jsonl").read_bytes() == (ev / "m1.jsonl").read_bytes()
  assert (ev / "m1.jsonl").read_text().count("\n") > 0
  assert sorted({p.name.split("-")[0] for p in (ev / "parts").glob("*.jsonl")}) == ["m1", "seed_only"]
  summary = json.loads((copy / "report/summary.json").read_text())
  assert "no_curation" in json.dumps(summary)

"""The one config layer: dataclasses -> ConfigDict -> dataclasses, absl overrides, and the errors."""
import json
import os

import pytest

from hb_jax.config import ConfigError, MeshConfig, SamplingConfig, TrainConfig, build, to_plain
from hb_jax.pipeline import config as pc
from hb_jax.pipeline.manifest import as_today

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")


def test_defaults_round_trip_every_key():
  cd = pc.defaults("x")
  assert pc.from_config_dict(cd) == pc.PipelineConfig(name="x")
  # Every field is a key of the ConfigDict, so --config.a.b= reaches it (nested sections included).
  assert cd.train.mesh.fsdp == -1 and cd.base.train.mesh.tensor == 1 and cd.augment.sampling.top_k == 0


def test_load_applies_overrides_like_launch():
  cfg = pc.load(TINY, ["augment.sampling.temperature=0.3", "train.mesh.tensor=2", "curate.compare=('digits',)"])
  assert cfg.name == "tiny"
  assert cfg.augment.sampling == SamplingConfig(temperature=0.3, top_p=0.9, max_new_tokens=8)
  assert cfg.train.mesh == MeshConfig(data=1, fsdp=-1, tensor=2)
  assert cfg.curate.compare == ("digits",)


@pytest.mark.parametrize("override, message", [
    ("trian.seed=1", r"trian"),
    ("train.seeed=1", r"seeed"),
    ("train.mesh_tensor=2", r"mesh_tensor"),
])
def test_load_names_a_bad_override(override, message):
  with pytest.raises(ConfigError, match=message):
    pc.load(TINY, [override])


def test_build_names_renamed_unknown_and_mistyped_keys():
  with pytest.raises(ConfigError, match=r"config.train.mesh_tensor was renamed: set config.train.mesh.tensor"):
    pc.from_config_dict({"name": "x", "train": {"mesh_tensor": 2}})
  with pytest.raises(ConfigError, match=r"config.train.lerning_rate: unknown key; did you mean "
                                        r"config.train.learning_rate\?"):
    pc.from_config_dict({"name": "x", "train": {"lerning_rate": 1e-3}})
  with pytest.raises(ConfigError, match=r"config.train.num_steps: expected an integer, found '5'"):
    pc.from_config_dict({"name": "x", "train": {"num_steps": "5"}})
  with pytest.raises(ConfigError, match=r"config.augment.sampling.top_p must be in \(0, 1\], found 2.0"):
    pc.from_config_dict({"name": "x", "augment": {"sampling": {"top_p": 2}}})
  with pytest.raises(ConfigError, match=r"length_buckets must be positive and strictly increasing, found \(256, 64\)"):
    pc.from_config_dict({"name": "x", "length_buckets": [256, 64]})
  with pytest.raises(ConfigError, match=r"model.attention must be one of .*found 'flash'"):
    pc.from_config_dict({"name": "x", "model": {"attention": "flash"}})
  assert pc.load(TINY, ["model.attention=chunked"]).model.attention == "chunked"
  with pytest.raises(ConfigError, match=r"x.mesh: expected a section of MeshConfig fields, found 3"):
    build(TrainConfig, {"mesh": 3}, "x")
  assert build(TrainConfig, {"learning_rate": 1, "mesh": {"tensor": 2}}, "t").learning_rate == 1.0


def test_old_config_file_is_told_what_replaced_with_defaults(tmp_path):
  old = tmp_path / "old.py"
  old.write_text("from ml_collections import config_dict\nfrom hb_jax.pipeline.config import with_defaults\n"
                 "def get_config():\n  c = config_dict.ConfigDict()\n  c.name = 'old'\n  return with_defaults(c)\n")
  with pytest.raises(ConfigError, match=r"with_defaults.*defaults\(name\)"):
    pc.load(str(old))


def test_manifest_entries_of_the_previous_layout_read_as_today():
  """A stage finished before sampling settings were nested and train.mesh_* became train.mesh: recorded as it
  was then, it reads as today's config, so the workdir resumes with nothing redone."""
  cfg = pc.load(TINY)
  recorded = {
      "augment": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 8, "batch": 16, "chunk_records": 16, "seed": 0},
      "backward": {**{k: v for k, v in to_plain(cfg.backward).items() if k != "mesh"},
                   "mesh_data": 1, "mesh_fsdp": -1, "mesh_tensor": 1},
      "evaluate": {"max_new_tokens": 8, "batch": 16, "tag_mode": "both", "max_items": 0},
  }
  today = {k: pc.section(cfg, k) for k in recorded}
  assert as_today(json.loads(json.dumps(recorded)), today) == today
  # ... and a value that did change is still seen.
  recorded["augment"]["temperature"] = 0.5
  assert as_today(recorded, today) != today


def test_a_workdir_finished_by_the_previous_layout_resumes_with_nothing_redone(tmp_path):
  """tests/pipeline/data/tiny_manifest_ab26090.json is the manifest of `python launch/run.py
  --config=configs/tiny.py` finished by commit ab26090, before this config layout (flat sampling keys,
  train.mesh_*, no mesh.rules, no curate.fallback). Today's configs/tiny.py, set as tiny was then (digits
  selecting with the compact rubric, all three raters compared; generate without the fallback, which did not
  exist), finds every stage
  done, and a lone stage too; with today's fallback default the curate stages are refused, naming it."""
  from hb_jax.pipeline import runner
  (tmp_path / "manifest.json").write_bytes(
      open(os.path.join(REPO, "tests", "pipeline", "data", "tiny_manifest_ab26090.json"), "rb").read())
  then = ["curate.method=digits", "curate.header=compact", "curate.generate_sample=8",
          "curate.compare=('generate', 'digits', 'likelihood')"]
  result = runner.run(pc.load(TINY, then + ["curate.fallback=false"]), tmp_path)
  assert result.ran == [] and "train_2" in result.skipped and "report" in result.skipped
  assert runner.run(pc.load(TINY, then + ["curate.fallback=false", "augment.batch=8"]), tmp_path,
                    only="curate_1").ran == []
  # A real change is still a change.
  with pytest.raises(Exception, match=r"augment.sampling.temperature"):
    runner.run(pc.load(TINY, then + ["augment.sampling.temperature=0.3"]), tmp_path)
  with pytest.raises(Exception, match=r"stage 'curate_1'.*curate\.fallback"):
    runner.run(pc.load(TINY, then), tmp_path)

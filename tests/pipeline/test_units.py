"""Fast tests of the pipeline's pure parts: config validation, manifest refusal, curation rules, the demo world
and its checker (the bulk job's tests: tests/test_jobs.py)."""
import collections
import os
import re

import pytest

from hb_jax.config import ConfigError
from hb_jax.data import records, synthetic
from hb_jax.pipeline import curation
from hb_jax.pipeline.config import from_config_dict, to_dict
from hb_jax.pipeline.manifest import Manifest, StageConfigChanged, diff_keys

from tests.pipeline.common import REPO, load_config_dict


@pytest.mark.parametrize("name", ["demo", "tiny", "llama7b", "llama33b", "llama65b", "llama2_70b"])
def test_configs_validate(name):
  cfg = from_config_dict(load_config_dict(name))
  assert cfg.name == name


@pytest.mark.parametrize("name", ["demo", "llama7b"])
def test_config_files_hold_every_field_so_the_command_line_reaches_it(name):
  from absl import flags
  from ml_collections import config_flags

  def leaves(d, prefix=""):
    return {k2 for k, v in d.items() for k2 in (leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k])}
  cd = load_config_dict(name)
  assert leaves(cd.to_dict()) == leaves(to_dict(from_config_dict(cd)))
  # A key the file does not spell out (train.seed) is set from the command line through the locked ConfigDict.
  fv = flags.FlagValues()
  path = os.path.join(REPO, "configs", f"{name}.py")
  argv = ["run.py", f"--config={path}", "--config.train.seed=3", "--config.backward.adam_b2=0.9"]
  config_flags.DEFINE_config_file("config", path, flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  cfg = from_config_dict(fv.config)
  assert (cfg.train.seed, cfg.backward.adam_b2, cfg.backward.direction) == (3, 0.9, "backward")


def test_unknown_key_is_named():
  cd = load_config_dict("tiny").to_dict()
  cd["curate"]["metod"] = "digits"
  with pytest.raises(ConfigError, match=r"config.curate.metod: unknown key; did you mean config.curate.method\?"):
    from_config_dict(cd)
  cd = load_config_dict("tiny").to_dict()
  cd["curate"]["method"] = "vibes"
  with pytest.raises(ConfigError, match="vibes"):
    from_config_dict(cd)
  cd = load_config_dict("tiny").to_dict()
  cd["evaluate"]["tag_mode"] = "source"  # held-out items have no source: refused before any training
  with pytest.raises(ConfigError, match=r"evaluate.tag_mode must be both\|seed\|augmented\|none, found 'source'"):
    from_config_dict(cd)


def test_manifest_refuses_changed_config_naming_keys(tmp_path):
  m = Manifest(tmp_path)
  assert m.check("augment", {"augment": {"sampling": {"temperature": 0.7}}}, {}) == "new"
  m.start("augment", {"augment": {"sampling": {"temperature": 0.7}}}, {"x": "1"})
  assert m.check("augment", {"augment": {"sampling": {"temperature": 0.7}}}, {"x": "1"}) == "resume"
  assert m.check("augment", {"augment": {"sampling": {"temperature": 0.5}}}, {"x": "1"}) == "restart"
  m.finish("augment", {"augment/candidates.jsonl": "abc"})
  m2 = Manifest(tmp_path)  # read back from disk
  assert m2.check("augment", {"augment": {"sampling": {"temperature": 0.7}}}, {"x": "1"}) == "done"
  with pytest.raises(StageConfigChanged, match=r"'augment'.*augment.sampling.temperature.*--restart_from=augment"):
    m2.check("augment", {"augment": {"sampling": {"temperature": 0.5}}}, {"x": "1"})
  with pytest.raises(StageConfigChanged, match="inputs changed"):
    m2.check("augment", {"augment": {"sampling": {"temperature": 0.7}}}, {"x": "2"})
  assert diff_keys({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3, "d": 4}}) == ["a.c", "a.d"]
  # A field the stage no longer depends on (recorded by an older version) is not a change; the others are.
  m2.start("curate_1", {"curate": {"method": "generate", "k": 5.0}}, {})
  m2.finish("curate_1", {})
  assert Manifest(tmp_path).check("curate_1", {"curate": {"method": "generate"}}, {}) == "done"
  with pytest.raises(StageConfigChanged, match=r"curate\.method"):
    Manifest(tmp_path).check("curate_1", {"curate": {"method": "digits"}}, {})


def test_manifest_survives_preemption_mid_save_on_an_object_store(tmp_path, monkeypatch):
  """On an object store a rewrite uncommits the manifest (marker first, then the upload); a preemption there
  must leave the stages recorded, read back from manifest.json.prev."""
  monkeypatch.setattr(records, "is_local", lambda path: False)  # local files through the object-store path
  m = Manifest(tmp_path)
  m.start("prepare", {"a": 1}, {})
  m.finish("prepare", {"data/seed.jsonl": "abc"})
  path_cls = type(m.path)
  upload = path_cls.write_bytes

  def preempted(self, data):
    if self.name == "manifest.json":
      raise KeyboardInterrupt("preempted mid-upload")
    return upload(self, data)

  with monkeypatch.context() as patch:
    patch.setattr(path_cls, "write_bytes", preempted)
    with pytest.raises(KeyboardInterrupt):
      m.start("augment", {"b": 1}, {"x": "1"})
  assert not records.is_committed(tmp_path / "manifest.json")
  back = Manifest(tmp_path)
  assert back.is_done("prepare") and back.outputs("prepare") == {"data/seed.jsonl": "abc"}
  assert back.check("augment", {"b": 1}, {"x": "1"}) == "resume"  # the backup holds the save that was cut
  back.finish("augment", {"augment/candidates.jsonl": "def"})
  assert Manifest(tmp_path).is_done("augment") and records.is_committed(tmp_path / "manifest.json")
  # A manifest moved away (to start the run over) is a fresh start, not a cue to read the backup.
  (tmp_path / "manifest.json").rename(tmp_path / "old-manifest.json")
  (tmp_path / "manifest.json.commit").unlink()
  assert Manifest(tmp_path).stages == {}


def test_curation_thresholds():
  assert curation.meets(5, 5, "generate") and not curation.meets(4, 5, "generate")
  assert curation.meets(4.5, 5, "digits") and not curation.meets(4.49, 5, "digits")
  assert curation.meets(4.0, 4, "likelihood") and not curation.meets(3.99, 4, "likelihood")
  assert not curation.meets(None, 1, "generate")
  assert curation.meets(4.5, 5, "generate", "fallback") and not curation.meets(4.5, 5, "generate", "parsed")
  cands = [{"id": f"{i:016x}"} for i in range(50)]
  s1, s2 = curation.sample_ids(cands, 10, 0), curation.sample_ids(list(reversed(cands)), 10, 0)
  assert s1 == s2 and len(s1) == 10


def test_world_truth_and_checker():
  w = synthetic.build_world(synthetic.WorldConfig(pool_size=200, pretrain_docs=20))
  assert abs(w.base_rate_good - 0.35) < 0.05
  kinds = {t["kind"] for t in w.truth.values()}
  assert kinds == {"good", *synthetic.NOISE_KINDS}
  seg_text = {s["id"]: s["text"] for s in w.pool}
  for sid, t in w.truth.items():
    if t["kind"] == "good":
      assert synthetic.pair_is_good(t["instruction"], t)
      item = {"family": t["family"], "key": t["key"]}
      assert synthetic.check(item, seg_text[sid], w.capitals)
    elif t["kind"] in ("wrong", "truncated"):
      item = {"family": t["family"], "key": t["key"]}
      assert not synthetic.check(item, seg_text[sid], w.capitals), (t, seg_text[sid])
  # Held-out items never reuse a seed instruction's arguments (capitals excepted, see build_world).
  seed_args = {synthetic.parse_instruction(r["instruction"])[1].__repr__() for r in w.seed
               if synthetic.parse_instruction(r["instruction"]) and not r["instruction"].startswith(("What is the capital", "Name the capital"))}
  held_args = {repr(h["args"]) for h in w.heldout if h["family"] != "capital"}
  assert not seed_args & held_args
  cap = next(h for h in w.heldout if h["family"] == "capital")
  other = next(c for c in w.capitals.values() if c != cap["key"])
  assert synthetic.check(cap, f"The capital is {cap['key']}.", w.capitals)
  assert not synthetic.check(cap, f"It is {cap['key']} or {other}.", w.capitals)
  assert synthetic.build_world(synthetic.WorldConfig(pool_size=200, pretrain_docs=20)).pool == w.pool


def test_world_pool_spans_families_and_seed_families_limits_the_seed():
  w = synthetic.build_world(synthetic.WorldConfig(pool_size=400, pretrain_docs=16, seed_families=("capital", "add")))
  good = collections.Counter(t["family"] for t in w.truth.values() if t["kind"] == "good")
  # Every family gets its share of good segments, even capital with one good sentence per country.
  assert set(good) == set(synthetic.FAMILIES) and min(good.values()) >= 0.15 * sum(good.values()), good
  # A judging demonstration's instruction ends with the rated pair: the task line, then the candidate.
  asked = [r["instruction"].split("\n")[-2] if r["output"].startswith("Score:") else r["instruction"] for r in w.seed]
  assert {synthetic.parse_instruction(a)[0] for a in asked} == {"capital", "add"}
  assert {h["family"] for h in w.heldout} == set(synthetic.FAMILIES)  # held-out spans every family
  with pytest.raises(ValueError, match="seed_families"):
    synthetic.WorldConfig(seed_families=("capital", "poetry"))
  # Pretraining pages lay the world's Q/A pairs out in every layout, in both orders.
  docs = synthetic.build_world(synthetic.WorldConfig(pool_size=50, pretrain_docs=400)).pretrain
  for layout in synthetic._QA_LAYOUTS + synthetic._AQ_LAYOUTS:
    rx = re.compile(re.escape(layout).replace(r"\{q\}", r"[A-Z][^\n]*?").replace(r"\{a\}", r"[^\n]+?"))
    assert any(rx.search(d) for d in docs), layout


def test_world_web_only_capitals_live_only_in_the_pool():
  cfg = synthetic.WorldConfig(num_countries=20, pool_size=400, pretrain_docs=400, web_only_fraction=0.5)
  w = synthetic.build_world(cfg)
  assert len(w.web_only) == 10
  words = lambda text: set(re.findall(r"[A-Za-z]+", text))
  hidden = {w.capitals[c] for c in w.web_only} | set(w.web_only)
  # The base model's text names every web-only country and capital, but never states or pairs the two; the
  # human seed names neither ...
  assert hidden <= set().union(*(words(d) for d in w.pretrain))
  for c in w.web_only:
    assert not any(f"capital of {c}" in d or f"{c} is a country. {w.capitals[c]} " in d for d in w.pretrain)
  assert not hidden & set().union(*(words(r["instruction"] + " " + r["output"]) for r in w.seed))
  # ... the pool states their capitals, and held-out questions about them are reported apart.
  seg_text = {s["id"]: s["text"] for s in w.pool}
  stated = {t["args"][0] for sid, t in w.truth.items()
            if t["kind"] == "good" and t["family"] == "capital" and w.capitals[t["args"][0]] in seg_text[sid]}
  assert stated & w.web_only
  groups = {h["group"] for h in w.heldout if h["family"] == "capital"}
  assert groups == {"capital", "capital-web"}
  assert all((h["group"] == "capital-web") == (h["args"][0] in w.web_only) for h in w.heldout if h["family"] == "capital")
  # Off by default: the world is the one it was before the option existed.
  plain = synthetic.build_world(synthetic.WorldConfig(num_countries=20, pool_size=400, pretrain_docs=400))
  assert not plain.web_only and {h["group"] for h in plain.heldout} == set(synthetic.FAMILIES)
  with pytest.raises(ValueError, match="web_only_fraction"):
    synthetic.WorldConfig(web_only_fraction=1.0)

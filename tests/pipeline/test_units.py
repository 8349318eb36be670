"""Fast tests of the pipeline's pure parts: config validation, manifest refusal, chunked bulk work with resume
and sharded merge, curation rules, the demo world and its checker."""
import collections
import json
import os
import re

import pytest

from hb_jax.config import ConfigError
from hb_jax.data import records, synthetic
from hb_jax.data import chunked
from hb_jax.pipeline import curation
from hb_jax.pipeline.config import from_config_dict
from hb_jax.pipeline.manifest import Manifest, StageConfigChanged, diff_keys

from tests.pipeline.common import REPO, load_config_dict


@pytest.mark.parametrize("name", ["demo", "tiny", "llama7b", "llama33b", "llama65b", "llama2_70b"])
def test_configs_validate(name):
  cfg = from_config_dict(load_config_dict(name))
  assert cfg.name == name


def test_unknown_key_is_named():
  cd = load_config_dict("tiny").to_dict()
  cd["curate"]["metod"] = "digits"
  with pytest.raises(ConfigError, match=r"config.curate: unknown keys \['metod'\]"):
    from_config_dict(cd)
  cd = load_config_dict("tiny").to_dict()
  cd["curate"]["method"] = "vibes"
  with pytest.raises(ConfigError, match="vibes"):
    from_config_dict(cd)


def test_manifest_refuses_changed_config_naming_keys(tmp_path):
  m = Manifest(tmp_path)
  assert m.check("augment", {"augment": {"temperature": 0.7}}, {}) == "new"
  m.start("augment", {"augment": {"temperature": 0.7}}, {"x": "1"})
  assert m.check("augment", {"augment": {"temperature": 0.7}}, {"x": "1"}) == "resume"
  assert m.check("augment", {"augment": {"temperature": 0.5}}, {"x": "1"}) == "restart"
  m.finish("augment", {"augment/candidates.jsonl": "abc"})
  m2 = Manifest(tmp_path)  # read back from disk
  assert m2.check("augment", {"augment": {"temperature": 0.7}}, {"x": "1"}) == "done"
  with pytest.raises(StageConfigChanged, match=r"'augment'.*augment.temperature.*--restart_from=augment"):
    m2.check("augment", {"augment": {"temperature": 0.5}}, {"x": "1"})
  with pytest.raises(StageConfigChanged, match="inputs changed"):
    m2.check("augment", {"augment": {"temperature": 0.7}}, {"x": "2"})
  assert diff_keys({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3, "d": 4}}) == ["a.c", "a.d"]


def _inputs(n):
  return [records.make_segment(f"text number {i}", "t") for i in range(n)]


def _fn(chunk):
  return [{"id": r["id"] + "-out", "in": r["id"], "text": r["text"].upper()} for r in chunk]


def test_bulk_resume_after_crash_is_byte_identical(tmp_path):
  inputs = _inputs(23)
  chunked.run(inputs, tmp_path / "a", "x", _fn, chunk_records=5, progress=False)
  chunked.merge(inputs, tmp_path / "a", "x", tmp_path / "a.jsonl", "in", process_count=1, chunk_records=5)

  calls = []

  def crashing(chunk):
    calls.append(len(chunk))
    if len(calls) == 3:
      raise KeyboardInterrupt("killed")
    return _fn(chunk)

  with pytest.raises(KeyboardInterrupt):
    chunked.run(inputs, tmp_path / "b", "x", crashing, chunk_records=5, progress=False)
  assert chunked.count_done(inputs, tmp_path / "b", "x", chunked.Share(), 5) == 2
  with pytest.raises(FileNotFoundError, match="missing"):
    chunked.merge(inputs, tmp_path / "b", "x", tmp_path / "b.jsonl", "in", process_count=1, chunk_records=5)
  assert chunked.run(inputs, tmp_path / "b", "x", _fn, chunk_records=5, progress=False) == 3  # only what was left
  chunked.merge(inputs, tmp_path / "b", "x", tmp_path / "b.jsonl", "in", process_count=1, chunk_records=5)
  assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_bulk_shards_merge_to_single_process_result(tmp_path):
  inputs = _inputs(31)
  chunked.run(inputs, tmp_path / "one", "x", _fn, chunk_records=4, progress=False)
  chunked.merge(inputs, tmp_path / "one", "x", tmp_path / "one.jsonl", "in", process_count=1, chunk_records=4)
  for p in range(3):
    chunked.run(inputs, tmp_path / "three", "x", _fn, share=chunked.Share(p, 3), chunk_records=4, progress=False)
  chunked.merge(inputs, tmp_path / "three", "x", tmp_path / "three.jsonl", "in", process_count=3, chunk_records=4)
  assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "three.jsonl").read_bytes()
  shares = [len(sum(chunked.my_chunks(inputs, chunked.Share(p, 3), 4), [])) for p in range(3)]
  assert sum(shares) == 31 and min(shares) > 0


def test_curation_thresholds():
  assert curation.meets(5, 5, "generate") and not curation.meets(4, 5, "generate")
  assert curation.meets(4.5, 5, "digits") and not curation.meets(4.49, 5, "digits")
  assert curation.meets(4.0, 4, "likelihood") and not curation.meets(3.99, 4, "likelihood")
  assert not curation.meets(None, 1, "generate")
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


def test_bulk_refuses_duplicate_input_ids(tmp_path):
  # Outputs are merged by input id: a repeated id would be written once per copy, squared.
  inputs = [{"id": "a"}, {"id": "b"}, {"id": "a"}]
  with pytest.raises(ValueError, match="input ids must be unique.*'a' 2 times"):
    chunked.run(inputs, tmp_path / "p", "x", _fn, chunk_records=2, progress=False)

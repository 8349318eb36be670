"""Bulk generation: resumed runs (stopped between chunks, or killed mid-write) give byte-identical output."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hb_jax.sample.bulk import BulkError, generate_jsonl
from hb_jax.sample.sampler import Sampler
from hb_jax.sample.sampling import Sampling

from .common import TEST_SAMPLE, random_prompts, tiny_model

KW = dict(max_new_tokens=6, sampling=Sampling(0.7, 0, 0.9), eos_ids=(5, 6, 7), progress=False)


@pytest.fixture(scope="module")
def sampler():
  return Sampler(tiny_model(4), config=TEST_SAMPLE)  # 6 records per chunk, 4 rows


@pytest.fixture
def inputs(tmp_path):
  lengths = np.random.default_rng(0).integers(2, 9, size=12)  # one length bucket, two chunks
  path = tmp_path / "prompts.jsonl"
  path.write_text("".join(json.dumps({"id": f"r{i:02d}", "tokens": p}) + "\n"
                          for i, p in enumerate(random_prompts(lengths, seed=9))))
  return path


def test_resume_is_byte_identical(sampler, inputs, tmp_path):
  full = tmp_path / "full.jsonl"
  stats = generate_jsonl(sampler, inputs, full, **KW)
  assert stats["complete"] and stats["records"] == 12 and 0 < stats["utilisation"] <= 1
  want = full.read_bytes()
  lines = want.decode().splitlines(keepends=True)
  assert [json.loads(x)["id"] for x in lines] == [f"r{i:02d}" for i in range(12)]
  assert any(json.loads(x)["finish_reason"] == "eos" for x in lines)

  # Stopped after one chunk, then resumed.
  out = tmp_path / "stopped.jsonl"
  first = generate_jsonl(sampler, inputs, out, stop_after_chunks=1, **KW)
  assert not first["complete"] and not out.exists() and first["records"] == 6
  generate_jsonl(sampler, inputs, out, **KW)
  assert out.read_bytes() == want

  # Killed while writing the second chunk: its file never got committed (a stray temp file), so a rerun
  # regenerates that chunk whole and skips the first.
  out = tmp_path / "torn.jsonl"
  generate_jsonl(sampler, inputs, out, stop_after_chunks=1, **KW)
  parts = tmp_path / "torn.jsonl.parts"
  (parts / ".generate-p000of001-c000001.jsonl.x.tmp").write_text("".join(lines[6:8]) + lines[8][:17])
  resumed = generate_jsonl(sampler, inputs, out, **KW)
  assert resumed["records"] == 6 and resumed["complete"]
  assert out.read_bytes() == want and not parts.exists()

  # A finished job with the same input and settings is not redone.
  again = generate_jsonl(sampler, inputs, out, **KW)
  assert again["records"] == 0 and again["complete"] and out.read_bytes() == want


def test_resume_after_the_input_or_settings_changed_recomputes_what_changed(sampler, inputs, tmp_path):
  lines = inputs.read_text().splitlines(keepends=True)
  grown = tmp_path / "grown.jsonl"
  grown.write_text(json.dumps({"id": "new", "tokens": [3, 4, 5]}) + "\n" + "".join(lines))
  fresh = tmp_path / "fresh.jsonl"
  generate_jsonl(sampler, grown, fresh, **KW)
  # Stopped after one chunk of the old input, resumed on the new one: every chunk shifted by one record.
  out = tmp_path / "out.jsonl"
  generate_jsonl(sampler, inputs, out, stop_after_chunks=1, **KW)
  resumed = generate_jsonl(sampler, grown, out, **KW)
  assert resumed["records"] == 13 and out.read_bytes() == fresh.read_bytes()
  # A changed setting is a different job, for unfinished chunks and for a finished output alike.
  longer = {**KW, "max_new_tokens": 9}
  fresh9 = tmp_path / "fresh9.jsonl"
  generate_jsonl(sampler, grown, fresh9, **longer)
  assert generate_jsonl(sampler, grown, out, **longer)["records"] == 13
  assert out.read_bytes() == fresh9.read_bytes() != fresh.read_bytes()


def test_bad_records_are_named(sampler, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"id": "a", "tokens": [3, 4]}) + "\n" + json.dumps({"id": "a", "tokens": [5]}) + "\n")
  with pytest.raises(BulkError, match="bad.jsonl:2: duplicate id 'a'"):
    generate_jsonl(sampler, bad, tmp_path / "o.jsonl", **KW)
  bad.write_text(json.dumps({"id": "b", "prompt": "hello"}) + "\n")
  with pytest.raises(BulkError, match="no tokenizer"):
    generate_jsonl(sampler, bad, tmp_path / "o2.jsonl", **KW)
  good = json.dumps({"id": "g", "tokens": [3, 4]}) + "\n"
  vocab = sampler.cfg.vocab_size
  for line, message in [('{"id": 1, "tokens": [3]}\n{"id": "1", "tokens": [4]}', "duplicate id '1'"),
                        ('{"id": ["x"], "tokens": [3]}', "expected an 'id'"),
                        ('{"id": "t", "tokens": "12"}', "'tokens' to be a list of token ids"),
                        ('{"id": "t", "tokens": [3, null]}', "'tokens' to be a list of token ids"),
                        ('{"id": "t", "tokens": []}', "the prompt is empty"),
                        (f'{{"id": "t", "tokens": [3, {vocab}]}}', rf"token ids must be in \[0, {vocab}\)")]:
    bad.write_text(good + line + "\n")
    where = 3 if "duplicate" in message else 2
    with pytest.raises(BulkError, match=rf"bad.jsonl:{where}: .*{message}"):
      generate_jsonl(sampler, bad, tmp_path / "o3.jsonl", **KW)
    assert not (tmp_path / "o3.jsonl.parts").exists()  # refused before any work
  bad.write_bytes(good.encode() + b'{"id": "u", "tokens": [3], "note": "\xff"}\n')
  with pytest.raises(BulkError, match="bad.jsonl:2: expected UTF-8"):
    generate_jsonl(sampler, bad, tmp_path / "o4.jsonl", **KW)

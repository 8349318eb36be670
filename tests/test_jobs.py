"""The one bulk job (hb_jax/jobs.py): chunks, resume after a crash, shares merged in input order, ids checked
once; and generate_jsonl on it: resumed runs (stopped between chunks, or killed mid-write) give
byte-identical output."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hb_jax import jobs
from hb_jax.data import records
from hb_jax.jobs import BulkJob, Share, generate_jsonl
from hb_jax.sample.sampler import Sampler
from hb_jax.sample.sampling import Sampling

from tests.sample.common import TEST_SAMPLE, random_prompts, tiny_model


def _inputs(n):
  return [records.make_segment(f"text number {i}", "t") for i in range(n)]


def _fn(chunk):
  return [{"id": r["id"] + "-out", "in": r["id"], "text": r["text"].upper()} for r in chunk]


def _job(inputs, tmp_path, name, **kw):
  return BulkJob(inputs, tmp_path / f"{name}.jsonl", parts=tmp_path / name, name="x", key="in", **kw)


def test_resume_after_a_crash_is_byte_identical(tmp_path):
  inputs = _inputs(23)
  assert _job(inputs, tmp_path, "a", chunk_records=5).run(_fn, progress=False) == jobs.JobResult(5, True)
  names = sorted(p.name for p in (tmp_path / "a").iterdir())
  assert len(names) == 5 and names[0].startswith("x-p000of001-c000000-")  # the names resumes rely on
  calls = []

  def crashing(chunk):
    calls.append(len(chunk))
    if len(calls) == 3:
      raise KeyboardInterrupt("killed")
    return _fn(chunk)

  with pytest.raises(KeyboardInterrupt):
    _job(inputs, tmp_path, "b", chunk_records=5).run(crashing, progress=False)
  job = _job(inputs, tmp_path, "b", chunk_records=5)
  assert job.count_done() == 2 and len(job.missing()) == 3
  with pytest.raises(FileNotFoundError, match="3 missing"):
    list(job.outputs())
  assert job.run(_fn, progress=False).computed == 3  # only what was left
  assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
  assert [r["in"] for r in records.read_jsonl(tmp_path / "b.jsonl")] == [r["id"] for r in inputs]


def test_shares_merge_to_the_single_process_result(tmp_path):
  inputs = _inputs(31)
  _job(inputs, tmp_path, "one", chunk_records=4).run(_fn, progress=False)
  results = [_job(inputs, tmp_path, "three", share=Share(p, 3), chunk_records=4).run(_fn, progress=False)
             for p in (1, 2, 0)]
  assert [r.complete for r in results] == [False, False, True]  # the last share completes the job
  assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "three.jsonl").read_bytes()
  sizes = [sum(c.size for c in mine) for mine in _job(inputs, tmp_path, "three", share=Share(0, 3)).plan().chunks]
  assert sum(sizes) == 31 and min(sizes) > 0
  assert [records.shard_of(r["id"], 3) for r in inputs].count(1) == sizes[1]


def test_a_barrier_makes_a_missing_chunk_an_error_and_max_chunks_stops_early(tmp_path):
  inputs, met = _inputs(12), []
  job = _job(inputs, tmp_path, "p", share=Share(0, 2), chunk_records=3)
  with pytest.raises(FileNotFoundError, match="a process has not finished its share"):
    job.run(_fn, barrier=met.append, progress=False)  # process 1 never ran
  assert met == ["x-computed"]
  early = _job(inputs, tmp_path, "q", chunk_records=5).run(_fn, barrier=met.append, max_chunks=1, progress=False)
  assert early == jobs.JobResult(1, False) and met == ["x-computed"] and not (tmp_path / "q.jsonl").exists()


def test_input_is_streamed_and_outputs_follow_it(tmp_path):
  """A reader function is read afresh for each pass; an input may have no output or several."""
  src = tmp_path / "in.jsonl"
  records.write_jsonl(src, _inputs(9))
  reads = []

  def reader():
    reads.append(1)
    return records.read_jsonl(src)

  def fn(chunk):
    return [{"in": r["id"], "k": k} for r in chunk for k in range(int(r["text"].split()[-1]) % 3)]

  job = BulkJob(reader, tmp_path / "out.jsonl", parts=tmp_path / "parts", name="x", key="in", chunk_records=2)
  job.run(fn, progress=False)
  want = [{"in": r["id"], "k": k} for r in _inputs(9) for k in range(int(r["text"].split()[-1]) % 3)]
  assert list(records.read_jsonl(tmp_path / "out.jsonl")) == want and len(reads) == 3  # plan, compute, merge
  with pytest.raises(TypeError, match="one-shot"):
    BulkJob(iter(_inputs(2)), tmp_path / "o.jsonl", parts=tmp_path / "p", name="x")


def test_ids_are_checked_once_naming_the_record(tmp_path):
  for inputs, message in [([{"id": "a"}, {"id": "b"}, {"id": "a"}],
                           r"input record 3: duplicate id 'a' \(first at input record 1\)"),
                          ([{"id": "a"}, {"id": 7}], r"input record 2: expected an 'id' \(a non-empty string\), found 7"),
                          ([{"id": "a", "_where": "f.jsonl:4"}, {"id": "a", "_where": "f.jsonl:9"}],
                           r"f.jsonl:9: duplicate id 'a' \(first on line 4\)")]:
    with pytest.raises(records.RecordError, match=message):
      _job(inputs, tmp_path, "p", chunk_records=2).run(_fn, progress=False)
    assert not (tmp_path / "p").exists()  # refused before any work


def test_a_job_without_parts_leaves_a_marker_and_is_not_redone(tmp_path):
  inputs, calls = _inputs(7), []

  def fn(chunk):
    calls.append(len(chunk))
    return _fn(chunk)

  def job(settings):
    return _job(inputs, tmp_path, "m", chunk_records=3, settings=settings, keep_parts=False)

  assert job("s1").run(fn, progress=False).computed == 3 and not (tmp_path / "m").exists()
  assert (tmp_path / "m.jsonl.done").read_text() == jobs.fingerprint(inputs, "s1") + "\n"
  assert job("s1").run(fn, progress=False) == jobs.JobResult(0, True) and calls == [3, 3, 1]
  assert job("s2").run(fn, progress=False).computed == 3  # other settings: another job


# ------------------------------------------------------------------------------------------ generate_jsonl
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
  # A changed setting is a different job, for unfinished chunks and for a finished output alike. (The run seed:
  # a setting that recompiles nothing, where another max_new_tokens would compile the decode loop anew.)
  reseeded = {**KW, "seed": 1}
  fresh1 = tmp_path / "fresh1.jsonl"
  generate_jsonl(sampler, grown, fresh1, **reseeded)
  assert generate_jsonl(sampler, grown, out, **reseeded)["records"] == 13
  assert out.read_bytes() == fresh1.read_bytes() != fresh.read_bytes()


def test_bad_records_are_named(sampler, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"id": "a", "tokens": [3, 4]}) + "\n" + json.dumps({"id": "a", "tokens": [5]}) + "\n")
  with pytest.raises(records.RecordError, match="bad.jsonl:2: duplicate id 'a'"):
    generate_jsonl(sampler, bad, tmp_path / "o.jsonl", **KW)
  bad.write_text(json.dumps({"id": "b", "prompt": "hello"}) + "\n")
  with pytest.raises(records.RecordError, match="no tokenizer"):
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
    with pytest.raises(records.RecordError, match=rf"bad.jsonl:{where}: .*{message}"):
      generate_jsonl(sampler, bad, tmp_path / "o3.jsonl", **KW)
    assert not (tmp_path / "o3.jsonl.parts").exists()  # refused before any work
  bad.write_bytes(good.encode() + b'{"id": "u", "tokens": [3], "note": "\xff"}\n')
  with pytest.raises(records.RecordError, match="bad.jsonl:2: expected UTF-8"):
    generate_jsonl(sampler, bad, tmp_path / "o4.jsonl", **KW)

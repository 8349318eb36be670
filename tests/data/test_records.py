"""Records: ids, strict/lenient readers, atomic writers."""
import json

import pytest

from hb_jax.data import records


def _write(path, lines: list[bytes]) -> None:
  path.write_bytes(b"".join(lines))


def test_ids_are_stable_content_hashes():
  a = records.pair_id("Say hi", "Hi")
  assert a == records.pair_id("Say hi", "Hi") and len(a) == 16 and int(a, 16) >= 0
  assert a != records.pair_id("Say hi ", "Hi") and a != records.pair_id("Say h", "iHi")
  assert records.segment_id("x") != records.pair_id("x", "")
  import hashlib
  assert records.content_id("a", "b") == hashlib.sha1(b'["a","b"]').hexdigest()[:16]
  pair = records.make_pair("I", "O", "seed", iteration=1)
  assert pair == {"id": records.pair_id("I", "O"), "instruction": "I", "output": "O", "source": "seed", "iteration": 1}
  with pytest.raises(ValueError, match="source"):
    records.make_pair("I", "O", "web")


def test_strict_reader_names_file_and_line(tmp_path):
  path = tmp_path / "pairs.jsonl"
  good = json.dumps(records.make_pair("I", "O", "seed")).encode() + b"\n"
  cases = {
    b"{not json\n": "expected JSON",
    b"\xff\xfe{}\n": "expected UTF-8",
    b'{"id": "x", "instruction": "I"}\n': "'output'",
    b'{"id": "x", "instruction": "I", "output": "  "}\n': "non-empty",
    b'{"id": "x", "instruction": "I", "output": 3}\n': "string",
    b"[1, 2]\n": "JSON object",
    b'{"id": "x", "instruction": "half \\ud83d emoji", "output": "O"}\n': "lone surrogate escape",
  }
  for bad, message in cases.items():
    _write(path, [good, b"\n", bad, good])
    with pytest.raises(records.RecordError) as e:
      list(records.read_pairs(path))
    assert f"{path}:3:" in str(e.value) and message in str(e.value)


def test_lenient_reader_skips_and_counts(tmp_path):
  path = tmp_path / "pairs.jsonl"
  good = json.dumps(records.make_pair("I", "O", "seed")).encode() + b"\n"
  # A whole escaped surrogate pair is a valid character; half of one cannot be written back as UTF-8.
  pair = b'{"id": "z", "instruction": "\\ud83d\\ude00", "output": "o"}\n'
  half = b'{"id": "h", "instruction": "\\ud83d", "output": "o"}\n'
  _write(path, [good, b"{oops\n", b"\xff\n", b'{"id": "x"}\n', b'{"id":"y","instruction":"","output":"o"}\n', pair,
                half, good])
  stats = records.ReadStats()
  got = list(records.read_pairs(path, strict=False, stats=stats))
  assert [r["id"] for r in got] == [got[0]["id"], "z", got[0]["id"]] and got[1]["instruction"] == "\U0001F600"
  assert stats.to_dict() == {"read": 3, "skipped": 5, "reasons": {
    "invalid_json": 1, "invalid_utf8": 1, "missing_field": 1, "empty_field": 1, "invalid_unicode": 1}}


def test_bom_and_null_fields(tmp_path):
  path = tmp_path / "pairs.jsonl"
  good = json.dumps(records.make_pair("I", "O", "seed")).encode() + b"\n"
  _write(path, [b"\xef\xbb\xbf" + good, good])  # a UTF-8 byte-order mark before the first record
  assert len(list(records.read_pairs(path))) == 2
  _write(path, [good, b'{"id": "x", "instruction": null, "output": "O"}\n'])
  with pytest.raises(records.RecordError, match=f"{path}:2: expected field 'instruction', found null"):
    list(records.read_pairs(path))


def test_gzip_is_read(tmp_path):
  import gzip
  path = tmp_path / "s.jsonl.gz"
  with gzip.open(path, "wb") as f:
    f.write((json.dumps(records.make_segment("text", "web")) + "\n").encode())
  assert [r["text"] for r in records.read_segments(path)] == ["text"]


def test_cut_off_or_fake_gzip_names_the_file_and_keeps_what_was_read(tmp_path):
  import gzip
  lines = b"".join(json.dumps(records.make_segment(f"text {i}", "web")).encode() + b"\n" for i in range(300))
  data = gzip.compress(lines)
  cut = tmp_path / "cut.jsonl.gz"
  cut.write_bytes(data[:len(data) // 2])
  seen = []
  with pytest.raises(records.RecordError, match=rf"{cut}:\d+: expected a complete gzip stream, found EOFError"):
    for r in records.read_segments(cut):
      seen.append(r)
  stats = records.ReadStats()
  kept = list(records.read_segments(cut, strict=False, stats=stats))
  assert 0 < len(kept) == len(seen) < 300 and kept[-1]["text"] == f"text {len(kept) - 1}"
  assert stats.reasons == {"truncated_gzip": 1}
  fake = tmp_path / "plain.jsonl.gz"
  fake.write_bytes(lines[:200])
  with pytest.raises(records.RecordError, match=rf"{fake}:1: expected a complete gzip stream, found BadGzipFile"):
    list(records.read_segments(fake))


def test_atomic_writer_leaves_nothing_half_written(tmp_path):
  path = tmp_path / "out" / "a.jsonl"
  assert records.write_jsonl(path, [{"id": "1"}, {"id": "2", "t": "é"}]) == 2
  assert path.read_text(encoding="utf-8") == '{"id":"1"}\n{"id":"2","t":"é"}\n'

  def failing():
    yield {"id": "3"}
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError):
    records.write_jsonl(path, failing())
  assert path.read_text(encoding="utf-8") == '{"id":"1"}\n{"id":"2","t":"é"}\n'  # old content intact
  assert sorted(p.name for p in path.parent.iterdir()) == ["a.jsonl"]          # no temp file left
  assert records.is_committed(path)
  records.write_json(tmp_path / "s.json", {"b": 1, "a": [1]})
  assert json.loads((tmp_path / "s.json").read_text()) == {"a": [1], "b": 1}

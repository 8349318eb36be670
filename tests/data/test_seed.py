"""Seed selection from oasst1 (flat messages and nested trees) and plain pairs."""
import gzip
import json
import subprocess
import sys
import pathlib

import pytest

from hb_jax.data import records, seed

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _msg(mid, parent, role, text, lang="en", rank=None, tree="t", **kw):
  return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "lang": lang, "rank": rank,
          "message_tree_id": tree, **kw}


def _messages():
  """Trees covering every rule: kept, non-English root, non-English reply, no rank-0 reply, deeper turns."""
  return [
    _msg("r1", None, "prompter", "What is a fox?", tree="r1"),
    _msg("a1b", "r1", "assistant", "A fox is a dog.", rank=1, tree="r1"),
    _msg("a1", "r1", "assistant", "A fox is a small canid.", rank=0, tree="r1"),
    _msg("p1", "a1", "prompter", "Tell me more.", tree="r1"),                      # second turn: ignored
    _msg("a1x", "p1", "assistant", "Foxes are omnivores.", rank=0, tree="r1"),
    _msg("r2", None, "prompter", "Was ist ein Fuchs?", lang="de", tree="r2"),
    _msg("a2", "r2", "assistant", "Ein Fuchs ist ein Tier.", lang="de", rank=0, tree="r2"),
    _msg("r3", None, "prompter", "Name a color.", tree="r3"),
    _msg("a3", "r3", "assistant", "Rot.", lang="de", rank=0, tree="r3"),            # reply not English
    _msg("r4", None, "prompter", "Name a planet.", tree="r4"),
    _msg("a4", "r4", "assistant", "Mars.", rank=1, tree="r4"),                      # no rank 0
    _msg("r5", None, "prompter", "Name a river.", tree="r5"),
    _msg("a5", "r5", "assistant", "The Nile.", rank=0, tree="r5"),
    _msg("r6", None, "prompter", "Deleted question.", tree="r6", deleted=True),
    _msg("a6", "r6", "assistant", "Deleted answer.", rank=0, tree="r6"),
    _msg("r7", None, "prompter", "Name a bird.", tree="r7"),
    _msg("a7", "r7", "assistant", "A robin.", rank=None, tree="r7"),                # unranked
  ]


def _tree_of(messages, root_id):
  children = {}
  for m in messages:
    children.setdefault(m["parent_id"], []).append(m)

  def build(m):
    return {**m, "replies": [build(c) for c in children.get(m["message_id"], [])]}

  root = next(m for m in messages if m["message_id"] == root_id)
  return {"message_tree_id": root_id, "tree_state": "ready_for_export", "prompt": build(root)}


EXPECTED = {("What is a fox?", "A fox is a small canid."), ("Name a river.", "The Nile.")}


def _write_jsonl(path, rows, gz=False):
  data = "".join(json.dumps(r) + "\n" for r in rows).encode()
  path.write_bytes(gzip.compress(data) if gz else data)


def test_flat_messages(tmp_path):
  path = tmp_path / "oasst.messages.jsonl.gz"
  msgs = _messages()
  _write_jsonl(path, msgs[::-1], gz=True)   # replies before their prompts: order must not matter
  stats = seed.SeedStats()
  pairs = seed.select_seed(path, stats=stats)
  assert stats.format == "oasst_messages"
  assert {(p["instruction"], p["output"]) for p in pairs} == EXPECTED
  assert all(p["source"] == "seed" and p["id"] == records.pair_id(p["instruction"], p["output"]) for p in pairs)
  assert {p["reply_message_id"] for p in pairs} == {"a1", "a5"}
  c = stats.counts
  assert (c["dropped_root_not_en"], c["dropped_no_rank0_en_reply"], c["dropped_deleted_or_rejected"]) == (1, 3, 1)
  assert c["kept"] == 2


def test_nested_trees_match_flat(tmp_path):
  msgs = _messages()
  roots = [m["message_id"] for m in msgs if m["parent_id"] is None]
  path = tmp_path / "oasst.trees.jsonl"
  _write_jsonl(path, [_tree_of(msgs, r) for r in roots])
  flat = tmp_path / "flat.jsonl"
  _write_jsonl(flat, msgs)
  stats = seed.SeedStats()
  trees = seed.select_seed(path, stats=stats)
  assert stats.format == "oasst_trees"
  assert trees == seed.select_seed(flat)


def test_cap_is_deterministic_and_order_free(tmp_path):
  rows = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(50)]
  a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
  _write_jsonl(a, rows)
  _write_jsonl(b, rows[::-1])
  capped = seed.select_seed(a, max_pairs=10)
  assert len(capped) == 10 and capped == seed.select_seed(b, max_pairs=10)
  full = seed.select_seed(a, max_pairs=None)
  assert capped == full[:10]                                  # a cap is a prefix of the hash order
  assert [p["id"] for p in full] == sorted((p["id"] for p in full), key=lambda i: seed.sort_key({"id": i}))


def test_plain_pairs_with_alpaca_input(tmp_path):
  path = tmp_path / "pairs.jsonl"
  _write_jsonl(path, [{"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
                      {"instruction": "Say hi.", "output": "Hi"}, {"instruction": "Say hi.", "output": "Hi"}])
  stats = seed.SeedStats()
  pairs = seed.select_seed(path, stats=stats)
  assert {p["instruction"] for p in pairs} == {"Translate.\n\nBonjour", "Say hi."}
  assert stats.counts["dropped_duplicate"] == 1


def test_bad_input_strict_and_lenient(tmp_path):
  path = tmp_path / "m.jsonl"
  msgs = _messages()
  lines = [json.dumps(m) for m in msgs[:3]] + ["{broken"] + [json.dumps(m) for m in msgs[3:]]
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(records.RecordError, match=f"{path}:4:"):
    seed.select_seed(path)
  stats = seed.SeedStats()
  assert {(p["instruction"], p["output"]) for p in seed.select_seed(path, strict=False, stats=stats)} == EXPECTED
  assert stats.read.reasons["invalid_json"] == 1
  other = tmp_path / "other.jsonl"
  _write_jsonl(other, [{"question": "q", "answer": "a"}])
  with pytest.raises(records.RecordError, match="other.jsonl:1: expected an oasst1 message"):
    seed.select_seed(other)
  # A deleted message is dropped even when the export blanked its text (strict mode does not stop on it).
  blanked = tmp_path / "blanked.jsonl"
  _write_jsonl(blanked, msgs + [_msg("r8", None, "prompter", "", tree="r8", deleted=True)])
  assert {(p["instruction"], p["output"]) for p in seed.select_seed(blanked)} == EXPECTED
  trees = tmp_path / "trees.jsonl"
  _write_jsonl(trees, [_tree_of(msgs, "r1"), {"prompt": {**_msg("r9", None, "prompter", ""), "deleted": True}}])
  stats = seed.SeedStats()
  assert len(seed.select_seed(trees, stats=stats)) == 1 and stats.counts["dropped_deleted_or_rejected"] == 1
  # Nothing usable, or a negative cap, is an error, and no seed file is written.
  german = tmp_path / "de.jsonl"
  _write_jsonl(german, msgs[5:7])
  with pytest.raises(records.RecordError, match=r"de.jsonl: expected at least one usable seed pair, found none "
                                                r"\(dropped: \{'dropped_root_not_en': 1\}"):
    seed.prepare_seed(german, tmp_path / "seed.jsonl")
  with pytest.raises(ValueError, match="max_pairs >= 0"):
    seed.prepare_seed(path, tmp_path / "seed.jsonl", max_pairs=-1)
  assert not (tmp_path / "seed.jsonl").exists()


def test_cli_writes_seed_and_stats(tmp_path):
  src = tmp_path / "msgs.jsonl"
  _write_jsonl(src, _messages())
  out = tmp_path / "data" / "seed.jsonl"
  subprocess.run([sys.executable, str(ROOT / "tools" / "prepare_seed.py"), "--input", str(src), "--output", str(out),
                  "--max", "1"], check=True, capture_output=True)
  got = list(records.read_pairs(out))
  assert len(got) == 1 and (got[0]["instruction"], got[0]["output"]) in EXPECTED
  assert json.loads((tmp_path / "data" / "seed.jsonl.stats.json").read_text())["counts"]["dropped_over_cap"] == 1

"""Pairwise judge: the verdict rule, the win-rate formula, matching, and both-order cancellation on a model."""
from __future__ import annotations

import json
import math

import pytest

from hb_jax.data import records
from hb_jax.eval import io, judge, templates

from .common import reference_logprobs

# Every judge call here scores 4 or 12 prompts, all in one length bucket: one compiled program.
BATCH = 4

INSTRUCTIONS = ["what capital city", "name a river", "four plus five", "which is long", "name one of these",
                "what is berlin"]
OUTPUTS_A = ["Paris", "Rome is the capital city", "four plus five", "the long river", "Berlin", ""]
OUTPUTS_B = ["madrid madrid madrid", "one of these", "nine", "short", "the river", "berlin is a capital city"]


def test_win_rate_and_standard_error_formula():
  # x = [1, 1, 0, 0.5]: mean 0.625; squared deviations sum to 0.6875; SE = sqrt(0.6875 / (4 * 3)).
  rate, se = judge.win_rate(["win", "win", "loss", "tie"])
  assert rate == 0.625
  assert se == pytest.approx(math.sqrt(0.6875 / 12), rel=1e-12) and se == pytest.approx(0.23935677693908453)
  assert judge.win_rate(["tie"] * 5) == (0.5, 0.0)
  assert judge.win_rate(["win"]) == (1.0, None)  # one item: no standard error
  rate, se = judge.win_rate(["win"] * 3 + ["loss"])
  assert (rate, se) == (0.75, pytest.approx(0.25))  # sqrt((3 * 0.0625 + 0.5625) / 12)


def test_verdict_rule():
  v = judge.verdict(1.0, 1.0, tie_margin=0.1)
  assert v["verdict"] == "win" and v["reason"] == "agree"
  assert v["margin"] == pytest.approx(math.tanh(0.5)) and v["preference"] == pytest.approx(1 / (1 + math.exp(-1)))
  assert judge.verdict(-1.0, -3.0, 0.1)["verdict"] == "loss"
  # The orders disagree: the judge preferred a position, not an answer.
  assert judge.verdict(3.0, -1.0, 0.0)["reason"] == "orders_disagree"
  assert judge.verdict(0.0, 2.0, 0.0)["verdict"] == "tie"
  # Both orders agree but the averaged margin tanh(0.05) ~ 0.05 is under 0.1.
  v = judge.verdict(0.1, 0.1, 0.1)
  assert (v["verdict"], v["reason"]) == ("tie", "below_margin")
  assert judge.verdict(0.1, 0.1, 0.0)["verdict"] == "win"
  # Swapping A and B negates both log-odds and mirrors the result exactly.
  a, b = judge.verdict(0.7, 0.2, 0.2), judge.verdict(-0.2, -0.7, 0.2)
  assert (a["verdict"], b["verdict"]) == ("win", "loss") and a["margin"] == -b["margin"]


def test_match_by_instruction_with_duplicates():
  a = [("a:1", {"instruction": "x", "output": "a1"}), ("a:2", {"instruction": "y", "output": "a2"}),
       ("a:3", {"instruction": "x", "output": "a3"}), ("a:4", {"instruction": "only a", "output": ""})]
  b = [("b:1", {"instruction": "x", "output": "b1", "generator": "gb"}), ("b:2", {"instruction": "z", "output": "b2"}),
       ("b:3", {"instruction": "y", "output": "b3"}), ("b:4", {"instruction": "x", "output": "b4"})]
  pairs, un_a, un_b = judge.match(a, b)
  assert [(p.output_a, p.output_b) for p in pairs] == [("a1", "b1"), ("a2", "b3"), ("a3", "b4")]
  assert pairs[0].generator_b == "gb" and un_a == ["a:4"] and un_b == ["b:2"]


def _write(tmp_path, name, outputs, generator, as_list):
  path = tmp_path / name
  recs = [{"instruction": i, "output": o, "generator": generator} for i, o in zip(INSTRUCTIONS, outputs)]
  if as_list:
    io.write_json_list(path, recs)
  else:  # JSONL, in another order: matching goes by instruction, not position
    records.write_jsonl(path, recs[::-1])
  return path


def test_log_odds_match_the_forward_pass(lm):
  """The verdict's log-odds are log p("1") - log p("2") at the end of the judge prompt, by `lm.logits`."""
  tok = lm.tokenizer
  pairs = [judge.Pair(INSTRUCTIONS[i], OUTPUTS_A[i], OUTPUTS_B[i], "a", "b", f"a{i}", f"b{i}") for i in (0, 5)]
  rows = judge.judge_pairs(lm, pairs, judge.JudgeConfig(tie_margin=0.0, batch=BATCH))
  queries = []  # (row, key, sign, context ids, id of "1", id of "2")
  for p, row in zip(pairs, rows):
    for first, second, key, sign in ((p.output_a, p.output_b, "d_a_first", 1), (p.output_b, p.output_a, "d_a_second", -1)):
      text = templates.judge_context(p.instruction, first, second)
      one, two = tok.encode(text + " 1", bos=True), tok.encode(text + " 2", bos=True)
      assert one[:-1] == two[:-1]
      queries.append((row, key, sign, one[:-1], one[-1], two[-1]))
  ref = reference_logprobs(lm, [q[3] for q in queries])
  for (row, key, sign, ctx, one, two), logp in zip(queries, ref):
    assert row[key] == pytest.approx(sign * (logp[-1, one] - logp[-1, two]), abs=2e-4)
    assert 0.0 < row["option_mass"] < 1.0


def test_identical_files_give_exactly_one_half(lm, tmp_path):
  a = _write(tmp_path, "a.json", OUTPUTS_A, "m", as_list=True)
  b = _write(tmp_path, "b.jsonl", OUTPUTS_A, "m", as_list=False)
  s = judge.run(lm, a, b, tmp_path / "s.json", tmp_path / "v.jsonl", judge.JudgeConfig(tie_margin=0.0, batch=BATCH),
                max_items=4)
  assert (s["win_rate"], s["standard_error"], s["ties"], s["n"]) == (0.5, 0.0, 4, 4)
  rows = list(records.read_jsonl(tmp_path / "v.jsonl"))
  # Same prompt in both orders, so the log-odds cancel exactly, not approximately.
  assert all(r["d_a_second"] == -r["d_a_first"] and r["preference"] == 0.5 for r in rows)


def test_swapping_files_mirrors_every_verdict(lm, tmp_path):
  a = _write(tmp_path, "a.json", OUTPUTS_A, "model-a", as_list=True)
  b = _write(tmp_path, "b.jsonl", OUTPUTS_B, "model-b", as_list=False)
  cfg = judge.JudgeConfig(tie_margin=0.0, batch=BATCH)
  ab = judge.run(lm, a, b, tmp_path / "ab.json", tmp_path / "ab.jsonl", cfg)
  ba = judge.run(lm, b, a, tmp_path / "ba.json", tmp_path / "ba.jsonl", cfg)
  # The random judge must decide some items for this test to mean anything (see WEIGHT_STD).
  assert ab["wins"] + ab["losses"] > 0 and ab["ties"] > 0, ab
  assert (ba["wins"], ba["losses"], ba["ties"]) == (ab["losses"], ab["wins"], ab["ties"])
  assert ba["win_rate"] == pytest.approx(1.0 - ab["win_rate"], abs=1e-12)
  assert ba["standard_error"] == pytest.approx(ab["standard_error"], abs=1e-12)
  assert ab["win_rate"] == (ab["wins"] + ab["ties"] / 2) / ab["n"]
  mirror = {"win": "loss", "loss": "win", "tie": "tie"}
  rows_ab = {r["instruction"]: r for r in records.read_jsonl(tmp_path / "ab.jsonl")}
  rows_ba = {r["instruction"]: r for r in records.read_jsonl(tmp_path / "ba.jsonl")}
  for ins, r in rows_ab.items():
    assert rows_ba[ins]["verdict"] == mirror[r["verdict"]]
    assert (rows_ba[ins]["d_a_first"], rows_ba[ins]["d_a_second"]) == (-r["d_a_second"], -r["d_a_first"])
  assert ab["generator_a"] == ["model-a"] and json.loads((tmp_path / "ab.json").read_text())["n"] == len(INSTRUCTIONS)
  # A margin no random judge reaches turns every agreeing item into a tie.
  wide = judge.run(lm, a, b, config=judge.JudgeConfig(tie_margin=0.99, batch=BATCH))
  assert wide["ties"] == wide["n"] and wide["ties_below_margin"] == ab["wins"] + ab["losses"]


def test_unmatched_and_malformed_inputs(lm, tmp_path):
  a = _write(tmp_path, "a.json", OUTPUTS_A, "m", as_list=True)
  other = tmp_path / "other.jsonl"
  records.write_jsonl(other, [{"instruction": "never asked", "output": "x"}])
  with pytest.raises(io.EvalError, match="nothing to judge"):
    judge.run(lm, a, other)
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"instruction": "x", "output": "y"}\n{"instruction": "z"}\n')
  with pytest.raises(io.EvalError, match=f"{bad}:2: expected field 'output'"):
    judge.run(lm, a, bad)

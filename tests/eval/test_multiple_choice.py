"""Multiple choice: parsing with file:line errors, prompt layout, shot selection, and known-answer accuracy."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hb_jax.data import records
from hb_jax.eval import io, multiple_choice as mc
from hb_jax.eval import templates

from .common import reference_logprobs

# Choices of very different lengths, so the summed and the per-token rules can pick differently.
QUESTIONS = [
  ("geography", "what capital city", ["paris", "rome is the capital city of these", "berlin"]),
  ("geography", "name a river", ["the long river", "madrid", "one of these rivers is long and short"]),
  ("arithmetic", "four plus five", ["nine", "six", "seven plus two is nine"]),
  ("arithmetic", "five plus one", ["six", "four", "the answer is six"]),
]
DEV = [("geography", "name the capital", ["rome", "four"], 0), ("arithmetic", "six plus one", ["seven", "five"], 0),
       ("geography", "which river is long", ["madrid", "the long river"], 1)]


def _item(subject, question, choices, answer=0, where="t:1"):
  return mc.MCItem(question, tuple(choices), answer, subject, where)


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


@pytest.mark.parametrize("line, message", [
  ('{"question": "q", "choices": ["a"], "answer": 0}', "expected 'choices' to be a list of at least 2"),
  ('{"question": "q", "choices": ["a", "b"], "answer": 2}', "'answer' 2 is out of range for 2 choices"),
  ('{"question": "q", "choices": ["a", "b"], "answer": "C"}', "'answer' 'C' is out of range for 2 choices"),
  ('{"question": "q", "choices": ["a", "b"], "answer": "first"}', "'answer' to be a choice index or a letter A-B"),
  ('{"question": "q", "choices": ["a", "b"], "answer": true}', "'answer' to be a choice index"),
  ('{"question": "q", "choices": ["a", 3], "answer": 0}', "expected choice 1 to be a non-empty string"),
  ('{"choices": ["a", "b"], "answer": 0}', "expected 'question' to be a non-empty string"),
  ('{"question": "q", "choices": ["a", "b"], "answer": 0, "subject": 5}', "expected 'subject' to be a string"),
  ('{"question": "q", "choices": ["a", "b"], "answer": 0', "expected JSON"),
])
def test_malformed_records_name_file_and_line(tmp_path, line, message):
  path = tmp_path / "mc.jsonl"
  path.write_text('{"question": "fine", "choices": ["a", "b"], "answer": "b"}\n\n' + line + "\n")
  with pytest.raises(ValueError, match=f"{path}:3: .*{message}"):
    mc.read_items(path)


def test_answer_letters_and_defaults(tmp_path):
  path = _write(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["a", "b", "c"], "answer": "c"},
                                        {"question": "r", "choices": ["a", "b"], "answer": 1, "subject": "x"}])
  items = mc.read_items(path)
  assert [(i.answer, i.subject, i.where) for i in items] == [(2, "", f"{path}:1"), (1, "x", f"{path}:2")]


def test_prompt_layout():
  item = _item("high_school_geography", "what capital city", ["paris", "rome"])
  shot = _item("high_school_geography", "name a river", ["madrid", "the long river"], answer=1)
  assert mc.context_text(item, [shot]) == (
    "The following are multiple choice questions (with answers) about high school geography.\n\n"
    "name a river\nAnswer: the long river\n\nwhat capital city\nAnswer:")
  assert mc.context_text(item, [shot], "letters") == (
    "The following are multiple choice questions (with answers) about high school geography.\n\n"
    "name a river\nA. madrid\nB. the long river\nAnswer: B\n\nwhat capital city\nA. paris\nB. rome\nAnswer:")
  assert templates.mc_answer(item.choices, 1, "letters") == " B"
  assert mc.context_text(_item("", "q", ["a", "b"]), []) == (
    "The following are multiple choice questions (with answers).\n\nq\nAnswer:")


def test_shot_selection():
  items = [_item(s, q, c, where=f"t:{k}") for k, (s, q, c) in enumerate(QUESTIONS)]
  dev = [_item(s, q, c, a) for s, q, c, a in DEV]
  shots = mc.select_shots(items, 2, dev)
  # The item's subject first, in dev-file order, then the other subjects.
  assert [s.question for s in shots[0]] == ["name the capital", "which river is long"]
  assert [s.question for s in shots[2]] == ["six plus one", "name the capital"]
  # From the evaluated file: never the item itself, its own subject first, and the same choice whatever the
  # file's order.
  own = mc.select_shots(items, 2)
  assert all(it.question not in {s.question for s in sh} for it, sh in zip(items, own))
  assert [s.question for s in own[0]][0] == "name a river" and own[0][1].subject == "arithmetic"
  again = mc.select_shots(items[::-1], 2)[::-1]
  assert [[s.question for s in sh] for sh in again] == [[s.question for s in sh] for sh in own]
  with pytest.raises(io.EvalError, match="t:0: 4 shots requested but the file has only 3"):
    mc.select_shots(items, 4)
  with pytest.raises(io.EvalError, match="t:0: 4 shots requested but the dev file has only 3 usable"):
    mc.select_shots(items, 4, dev)


def _reference(lm, items, shots):
  """Summed log-likelihoods and continuation lengths per item, from `lm.logits` (no Scorer involved)."""
  tok = lm.tokenizer
  seqs, spans = [], []
  for it, sh in zip(items, shots):
    ctx_text = mc.context_text(it, sh)
    ctx = tok.encode(ctx_text, bos=True)
    for c in it.choices:
      whole = tok.encode(ctx_text + " " + c, bos=True)
      assert whole[:len(ctx)] == ctx  # these texts split cleanly at the space
      seqs.append(whole)
      spans.append(len(ctx))
  logps = reference_logprobs(lm, seqs)
  lls = [sum(lp[t - 1, s[t]] for t in range(n, len(s))) for s, n, lp in zip(seqs, spans, logps)]
  lens = [len(s) - n for s, n in zip(seqs, spans)]
  out, k = [], 0
  for it in items:
    out.append((np.array(lls[k:k + len(it.choices)]), np.array(lens[k:k + len(it.choices)], float)))
    k += len(it.choices)
  return out


def test_known_answer_accuracy(lm, tmp_path):
  items = [_item(s, q, c) for s, q, c in QUESTIONS]
  ref = _reference(lm, items, [[] for _ in items])
  picks = [int(np.argmax(ll)) for ll, _ in ref]
  picks_norm = [int(np.argmax(ll / n)) for ll, n in ref]
  assert picks != picks_norm, "the test needs an item where the two rules disagree"
  # The answer key: the model's summed-likelihood pick for the first three, another choice for the last.
  answers = picks[:3] + [(picks[3] + 1) % len(items[3].choices)]
  rows = [{"question": q, "choices": c, "answer": a, "subject": s} for (s, q, c), a in zip(QUESTIONS, answers)]
  # Letters for the answer key too: "answer" may be "A".."C".
  rows[0]["answer"] = "ABC"[answers[0]]
  path = _write(tmp_path / "mc.jsonl", rows)
  summary = mc.run(lm, path, tmp_path / "summary.json", mc.MCConfig(batch=16), details_path=tmp_path / "d.jsonl")
  assert summary["accuracy"] == 0.75
  assert summary["subjects"]["geography"]["accuracy"] == 1.0 and summary["subjects"]["arithmetic"]["accuracy"] == 0.5
  assert summary["macro_accuracy"] == 0.75 and summary["n"] == 4
  assert summary["accuracy_per_token"] == np.mean([p == a for p, a in zip(picks_norm, answers)])
  assert summary["chance"] == pytest.approx(1 / 3)
  details = list(records.read_jsonl(tmp_path / "d.jsonl"))
  for d, (ll, n), p, pn in zip(details, ref, picks, picks_norm):
    np.testing.assert_allclose(d["loglikelihoods"], ll, rtol=1e-4, atol=1e-3)
    assert d["tokens"] == n.tolist() and (d["pred"], d["pred_per_token"]) == (p, pn)
  assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_k_shot_scores_the_shot_prompts(lm, tmp_path):
  items = [_item(s, q, c) for s, q, c in QUESTIONS]
  dev = [_item(s, q, c, a) for s, q, c, a in DEV]
  summary, details = mc.evaluate(lm, items, mc.MCConfig(shots=1, batch=16), dev)
  ref = _reference(lm, items, mc.select_shots(items, 1, dev))
  for d, (ll, _) in zip(details, ref):
    np.testing.assert_allclose(d["loglikelihoods"], ll, rtol=1e-4, atol=1e-3)
  assert summary["accuracy"] == np.mean([int(np.argmax(ll)) == 0 for ll, _ in ref])

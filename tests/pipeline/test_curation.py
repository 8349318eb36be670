"""The `generate` rater never loses a rating silently: with the fallback (default) a text without `Score: k`
is read from p("1".."5") after its reasoning; without it the rating is unrated (route none). On the tiny
random model, whose sampled reasoning never writes a score line."""
import pytest

from hb_jax.config import SamplingConfig
from hb_jax.data import prompts, records
from hb_jax.pipeline import curation
from hb_jax.pipeline.config import CurateConfig

STYLE = prompts.PromptStyle(curation_header="inst below is an instruction from user decide which answer\n")


@pytest.fixture(scope="module")
def candidates():
  return [records.make_pair(f"what capital city {w}", f"paris rome {w} berlin", "augmented")
          for w in ("one", "two", "three", "four", "five", "six")]


def _curate(fallback):
  return CurateConfig(method="generate", batch=4, fallback=fallback,
                      sampling=SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=5, seed=0))


def test_routes_add_up_and_the_fallback_reads_the_digits_after_the_reasoning(lm, candidates):
  on = curation.score("generate", lm, candidates, style=STYLE, tag_mode="seed", curate=_curate(True))
  off = curation.score("generate", lm, candidates, style=STYLE, tag_mode="seed", curate=_curate(False))
  routes = [r["route"] for r in on]
  assert len(on) == len(off) == len(candidates) and set(routes) <= set(curation.ROUTES)
  for a, b, c in zip(on, off, candidates):
    text = b["rating_text"]  # the same seeds: the same reasoning with the fallback on or off
    assert a["rating_text"].startswith(text)
    if a["route"] == "parsed":
      assert b["route"] == "parsed" and a["score"] == b["score"] == prompts.parse_rating(text)
      continue
    assert a["route"] == "fallback" and b["route"] == "none" and b["score"] is None
    # The reasoning kept: all of it after an EOS, else without the line the budget cut (the sampler knows which;
    # here either may hold, and the rating must be the expected digit after one of them).
    expected = []
    for finished in (True, False):
      reasoning = curation.reasoning_before_score(text, finished)
      q = prompts.rating_query(lm.tokenizer, c["instruction"], c["output"], reasoning, style=STYLE,
                               tag=prompts.TAG_SEED)
      p = lm.scorer().candidate_distribution([q.context], q.digit_ids)[0]
      expected.append(sum((k + 1) * float(x) for k, x in enumerate(p)))
    assert min(abs(a["score"] - e) for e in expected) < 2e-4, (a["score"], expected)
    assert 1 <= a["score"] <= 5
  assert routes.count("fallback") > 0  # the random model writes no score line: the path is exercised
  # A fallback rating is an expected rating: A5 at >= 4.5, as for digits.
  assert curation.select([{"score": 4.6, "route": "fallback"}], 5, "generate")
  assert not curation.select([{"score": 4.6, "route": "parsed"}, {"score": None, "route": "none"}], 5, "generate")


def test_reasoning_before_score_drops_only_a_line_the_budget_cut():
  assert curation.reasoning_before_score("Clear and complete.\nIt answers", finished=False) == "Clear and complete."
  assert curation.reasoning_before_score("It answers", finished=False) == ""
  assert curation.reasoning_before_score("Clear.\nIt answers.", finished=True) == "Clear.\nIt answers."
  assert (prompts.rating_context("I", "O", "Clear.", tag="T") ==
          prompts.curation_prompt("I", "O", tag="T") + " Clear.\nScore:")

"""Self-curation: three ways for a model to rate candidate (instruction, output) pairs on the 1-5 scale.

  generate    the paper: sample a rating with the Table-1 prompt, parse the last `Score: k` of the generated
              text (hb_jax.data.prompts.parse_rating); unparseable ratings get score None and are counted.
  digits      the expected rating from p("1".."5") right after `Score:` (one forward pass, no decoding).
  likelihood  ours: how readily the rater would have written this answer itself. 1 + 4 * exp(mean log p) of
              the output tokens (EOS included) given the forward prompt of the instruction: the geometric
              mean token probability on the 1-5 scale. A truncated answer pays for its early EOS, a wrong fact
              for its one unlikely token, boilerplate and chatter for every token.

The rater reads the curation prompt as an instruction in the format it was trained on: the chat wrapper and,
when training used tags, the seed tag (with tags off this is exactly prompts.curation_prompt).
A5 = rating 5 (generate) or rating >= 4.5 (digits, likelihood); A4 = rating >= 4.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from hb_jax.config import SampleConfig, SamplingConfig
from hb_jax.data import prompts
from hb_jax.sample import plan

RATING_DIGITS = prompts.RATING_DIGITS


def rater_prompt(instruction: str, output: str, style: prompts.PromptStyle, tag: str) -> str:
  return prompts.forward_prompt(style.curation_header + f"{instruction}\n{output}", tag, style)


def digit_query(tok, instruction: str, output: str, style: prompts.PromptStyle, tag: str) -> tuple[list[int], list[int]]:
  """(context ids ending right after 'Score:', the five digit ids), split as the model sees ' Score: k'."""
  text = rater_prompt(instruction, output, style, tag) + style.answer_prefix + "Score:"
  return prompts.option_query(tok, text, RATING_DIGITS)


def meets(score: float | int | None, k: float, method: str) -> bool:
  """The A_k rule: integer ratings need score >= k; probability-based ones >= k - 0.5 when k is 5 (the
  paper's '>= 4.5' for A5) and >= k otherwise."""
  if score is None:
    return False
  if method == "generate":
    return score >= k
  return score >= (k - 0.5 if k >= 5 else k)


def encoder(method: str, tok, *, style: prompts.PromptStyle, tag_mode: str) -> Callable[[dict], Any]:
  """candidate -> what `score_encoded` needs for `method` (token ids); host work that the chunk engine runs
  ahead of the device (hb_jax.jobs)."""
  tag = prompts.tag_for("seed", tag_mode, style) if tag_mode != "none" else ""
  if method == "generate":
    return lambda c: tok.encode(rater_prompt(c["instruction"], c["output"], style, tag), bos=True)
  if method == "digits":
    return lambda c: digit_query(tok, c["instruction"], c["output"], style, tag)
  if method == "likelihood":
    # The rater judges the answer as an assistant would give it: the seed (AI-Assistant) tag.
    return lambda c: (tok.encode(prompts.forward_prompt(c["instruction"], tag, style), bos=True),
                      tok.encode(prompts.forward_target(c["output"], style), eos=True))
  raise ValueError(f"curation: unknown method {method!r}")


def score_encoded(method: str, lm, candidates: Sequence[dict], encoded: Sequence[Any], *, curate) -> list[dict]:
  """Scores for `candidates` (encoded by `encoder(method, ...)`); each is {"score", "rating_text"}."""
  if not candidates:
    return []
  if method == "generate":
    return _score_generate(lm, candidates, encoded, sampling=curate.sampling, batch=curate.batch)
  if method == "digits":
    return _score_digits(lm, encoded, batch=curate.batch)
  if method == "likelihood":
    return _score_likelihood(lm, encoded, batch=curate.batch)
  raise ValueError(f"curation: unknown method {method!r}")


def score(method: str, lm, candidates: Sequence[dict], *, style, tag_mode: str, curate) -> list[dict]:
  """Scores for `candidates` with `method`; each is {"score", "rating_text"}."""
  encode = encoder(method, lm.tokenizer, style=style, tag_mode=tag_mode)
  return score_encoded(method, lm, candidates, [encode(c) for c in candidates], curate=curate)


def _score_generate(lm, candidates: Sequence[dict], ids: Sequence[list[int]], *, sampling: SamplingConfig,
                    batch: int) -> list[dict]:
  sp = sampling
  seeds = [plan.seed_from_id(c["id"], sp.seed) for c in candidates]
  # The rubric every prompt starts with is prefilled once and attended by every row (SampleConfig's
  # prefix_min_tokens): rows only compute the candidate and the rating they write.
  cfg = SampleConfig(max_batch=batch)
  outs = lm.generate(list(ids), sp.max_new_tokens, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k,
                     seed=seeds, config=cfg)
  res = []
  for o in outs:
    text = lm.tokenizer.decode(o)
    res.append({"score": prompts.parse_rating(text), "rating_text": text})
  return res


def _score_digits(lm, queries: Sequence[tuple[list[int], list[int]]], *, batch: int) -> list[dict]:
  digit_ids = queries[0][1]
  if any(q[1] != digit_ids for q in queries):
    raise ValueError("score_digits: the digit tokens differ between candidates")
  probs = lm.scorer(SampleConfig(score_batch=batch)).candidate_distribution([q[0] for q in queries], digit_ids)
  return [{"score": round(float(np.dot(p, np.arange(1, 6))), 4),
           "rating_text": " ".join(f"{d}:{float(x):.3f}" for d, x in zip(RATING_DIGITS, p))} for p in probs]


def _score_likelihood(lm, pairs: Sequence[tuple[list[int], list[int]]], *, batch: int) -> list[dict]:
  ctx, cont = [p[0] for p in pairs], [p[1] for p in pairs]
  ll = lm.scorer(SampleConfig(score_batch=batch)).loglikelihood(ctx, cont)
  out = []
  for total, k in zip(ll, cont):
    mean = float(total) / max(1, len(k))
    out.append({"score": round(1.0 + 4.0 * math.exp(mean), 4), "rating_text": f"mean_logp={mean:.4f}"})
  return out


def select(scored: Sequence[dict], k: float, method: str) -> list[dict]:
  return [r for r in scored if meets(r.get("score"), k, method)]


def sample_ids(candidates: Sequence[dict], n: int, seed: int) -> set[str]:
  """A deterministic sample of candidate ids (by hash order), for methods run on a subset."""
  if n <= 0 or n >= len(candidates):
    return {c["id"] for c in candidates}
  ranked = sorted(candidates, key=lambda c: plan.seed_from_id(c["id"], seed))
  return {c["id"] for c in ranked[:n]}


def precision_recall(selected_ids: set[str], candidates: Sequence[dict], good_segments: set[str]) -> dict[str, Any]:
  """Precision/recall of a selection against the hidden truth (good = the segment truly answers)."""
  good = {c["id"] for c in candidates if c.get("segment_id") in good_segments}
  tp = len(selected_ids & good)
  return {"selected": len(selected_ids), "good": len(good), "true_positives": tp,
          "precision": tp / len(selected_ids) if selected_ids else 0.0,
          "recall": tp / len(good) if good else 0.0}

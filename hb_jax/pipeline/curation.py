"""Self-curation: three ways for a model to rate candidate (instruction, output) pairs on the 1-5 scale.

  generate    the paper: sample a rating with the Table-1 prompt, parse the last `Score: k` of the generated
              text (hb_jax.data.prompts.parse_rating). When the text holds none (a small or chat model
              often writes no score line within its budget), the fallback (`curate.fallback`, on by
              default) keeps the reasoning minus an unfinished last line, appends `Score:` and takes the
              expected rating from p("1".."5"), as `digits` does after that reasoning. Every record says
              which `route` gave its score: parsed, fallback, or none (unrated: only with the fallback off).
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

import dataclasses
import math
from typing import Any, Callable, Sequence

from hb_jax.config import SampleConfig
from hb_jax.data import prompts
from hb_jax.sample import plan, scoring

RATING_DIGITS = prompts.RATING_DIGITS


ROUTES = ("parsed", "fallback", "none")


def meets(score: float | int | None, k: float, method: str, route: str | None = None) -> bool:
  """The A_k rule: parsed integer ratings need score >= k; probability-based ones (digits, likelihood and
  generate's fallback) >= k - 0.5 when k is 5 (the paper's '>= 4.5' for A5) and >= k otherwise."""
  if score is None:
    return False
  if method == "generate" and route != "fallback":
    return score >= k
  return score >= (k - 0.5 if k >= 5 else k)


def rater_tag(tag_mode: str, style: prompts.PromptStyle) -> str:
  return prompts.tag_for("seed", tag_mode, style) if tag_mode != "none" else ""


def encoder(method: str, tok, *, style: prompts.PromptStyle, tag_mode: str) -> Callable[[dict], Any]:
  """candidate -> what `score_encoded` needs for `method` (token ids); host work that the chunk engine runs
  ahead of the device (hb_jax.jobs)."""
  tag = rater_tag(tag_mode, style)
  if method == "generate":
    return lambda c: tok.encode(prompts.curation_prompt(c["instruction"], c["output"], style, tag), bos=True)
  if method == "digits":
    return lambda c: prompts.rating_query(tok, c["instruction"], c["output"], style=style, tag=tag)
  if method == "likelihood":
    # The rater judges the answer as an assistant would give it: the seed (AI-Assistant) tag.
    return lambda c: (tok.encode(prompts.forward_prompt(c["instruction"], tag, style), bos=True),
                      tok.encode(prompts.forward_target(c["output"], style), eos=True))
  raise ValueError(f"curation: unknown method {method!r}")


def score_encoded(method: str, lm, candidates: Sequence[dict], encoded: Sequence[Any], *, curate, style: prompts.PromptStyle,
                  tag_mode: str, engine: SampleConfig = SampleConfig()) -> list[dict]:
  """Scores for `candidates` (encoded by `encoder(method, ...)` with the same style and tag_mode); each is
  {"score", "rating_text"}, and "route" for generate. `engine`: the run's engine layout (prompt buckets, KV
  page size; hb_jax.pipeline.config.engine), its batch sizes set here from `curate`."""
  if not candidates:
    return []
  if method == "generate":
    return _score_generate(lm, candidates, encoded, curate=curate, style=style, tag=rater_tag(tag_mode, style),
                           engine=engine)
  if method == "digits":
    return _score_digits(lm, encoded, batch=curate.batch, engine=engine)
  if method == "likelihood":
    return _score_likelihood(lm, encoded, batch=curate.batch, engine=engine)
  raise ValueError(f"curation: unknown method {method!r}")


def score(method: str, lm, candidates: Sequence[dict], *, style, tag_mode: str, curate,
          engine: SampleConfig = SampleConfig()) -> list[dict]:
  """Scores for `candidates` with `method`; each is {"score", "rating_text"} (+ "route" for generate)."""
  encode = encoder(method, lm.tokenizer, style=style, tag_mode=tag_mode)
  return score_encoded(method, lm, candidates, [encode(c) for c in candidates], curate=curate, style=style,
                       tag_mode=tag_mode, engine=engine)


def _score_generate(lm, candidates: Sequence[dict], ids: Sequence[list[int]], *, curate, style: prompts.PromptStyle,
                    tag: str, engine: SampleConfig) -> list[dict]:
  sp = curate.sampling
  seeds = [plan.seed_from_id(c["id"], sp.seed) for c in candidates]
  # The rubric every prompt starts with is prefilled once and attended by every row (SampleConfig's
  # prefix_min_tokens): rows only compute the candidate and the rating they write.
  cfg = dataclasses.replace(engine, max_batch=curate.batch)
  outs = lm.generate(list(ids), sp.max_new_tokens, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k,
                     seed=seeds, config=cfg)
  texts = [lm.tokenizer.decode(o) for o in outs]
  res = [{"score": prompts.parse_rating(t), "rating_text": t, "route": "parsed"} for t in texts]
  lost = [i for i, r in enumerate(res) if r["score"] is None]
  if lost and curate.fallback:
    queries = []
    for i in lost:
      c = candidates[i]
      queries.append(prompts.rating_query(lm.tokenizer, c["instruction"], c["output"],
                                          reasoning_before_score(texts[i], finished=len(outs[i]) < sp.max_new_tokens),
                                          style=style, tag=tag))
    for i, q in zip(lost, _score_digits(lm, queries, batch=curate.batch, engine=engine)):
      res[i] = {"score": q["score"], "rating_text": f"{texts[i]}\n[fallback] {q['rating_text']}", "route": "fallback"}
  else:
    for i in lost:
      res[i]["route"] = "none"
  return res


def reasoning_before_score(text: str, finished: bool) -> str:
  """The rater's reasoning to put before `Score:`: all of it when it ended on its own (EOS), else without
  the last line, which the token budget cut (an unfinished sentence would make a poor context)."""
  if finished:
    return text
  return text.rsplit("\n", 1)[0] if "\n" in text else ""


def _score_digits(lm, queries: Sequence[prompts.RatingQuery], *, batch: int, engine: SampleConfig) -> list[dict]:
  digit_ids = queries[0].digit_ids
  if any(q.digit_ids != digit_ids for q in queries):
    raise ValueError("score_digits: the digit tokens differ between candidates")
  probs = lm.scorer(dataclasses.replace(engine, score_batch=batch)).candidate_distribution([q.context for q in queries], digit_ids)
  ratings = scoring.expected_value(probs, range(1, 6))
  return [{"score": round(float(r), 4), "rating_text": " ".join(f"{d}:{float(x):.3f}" for d, x in zip(RATING_DIGITS, p))}
          for p, r in zip(probs, ratings)]


def _score_likelihood(lm, pairs: Sequence[tuple[list[int], list[int]]], *, batch: int,
                      engine: SampleConfig) -> list[dict]:
  ctx, cont = [p[0] for p in pairs], [p[1] for p in pairs]
  ll = lm.scorer(dataclasses.replace(engine, score_batch=batch)).loglikelihood(ctx, cont)
  out = []
  for total, k in zip(ll, cont):
    mean = float(total) / max(1, len(k))
    out.append({"score": round(1.0 + 4.0 * math.exp(mean), 4), "rating_text": f"mean_logp={mean:.4f}"})
  return out


def select(scored: Sequence[dict], k: float, method: str) -> list[dict]:
  return [r for r in scored if meets(r.get("score"), k, method, r.get("route"))]


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

"""A local pairwise judge: a model folder compares two AlpacaEval output files, item by item, in both orders.

For each instruction present in both files the judge reads two prompts (hb_jax/eval/templates.py): A shown
first, then B shown first. In each it compares the probabilities of the two verdict tokens ("1", "2") right
after `Better answer:`, one forward pass per prompt and no decoding, so nothing is parsed and nothing is lost.

  d_first  = log p("1") - log p("2")  with A as answer 1    (> 0: A preferred)
  d_second = log p("2") - log p("1")  with B as answer 1    (> 0: A preferred)
  p_first  = sigmoid(d_first), p_second = sigmoid(d_second)   p(A better), renormalised over the two tokens
  preference = (p_first + p_second) / 2; margin = 2 * preference - 1 = (tanh(d_first/2) + tanh(d_second/2)) / 2

Verdict for A: win if both orders prefer A and margin >= tie_margin; loss if both prefer B and
-margin >= tie_margin; otherwise a tie (reason `orders_disagree` or `below_margin`). A judge that only
prefers a position thus produces ties, not wins. Swapping the files negates every d exactly, so it mirrors
every verdict; identical outputs give d_second = -d_first exactly, so always a tie.

Win rate of A over B, ties counting half: x_i = 1 (win), 0.5 (tie), 0 (loss); win_rate = mean(x) =
(wins + ties / 2) / n; standard error = sqrt(sum_i (x_i - win_rate)^2 / (n (n - 1))) (the sample standard
deviation over sqrt(n), as AlpacaEval reports it; undefined for n < 2).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
from typing import Sequence

import numpy as np
from etils import epath

from hb_jax.config import SampleConfig
from hb_jax.data import prompts, records
from hb_jax.eval import io, templates
from hb_jax.eval.generate import tag_text  # the same tag names as generation

log = logging.getLogger(__name__)

VERDICT_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}
WIN_RATE_FORMULA = ("win_rate = (wins + ties/2) / n; standard_error = sqrt(sum_i (x_i - win_rate)^2 / (n (n-1))) "
                    "with x_i = 1 win, 0.5 tie, 0 loss")


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  """`tie_margin`: the smallest |p(A better) - p(B better)| (averaged over both orders) that decides an item.
  `tag`: the tag the judge's prompt carries (none | seed | web | both; see generate.TAGS). `max_output_tokens`
  (> 0) cuts each answer to that many tokens so long pairs fit the model; 0 keeps them whole."""
  tie_margin: float = 0.1
  tag: str = "none"
  batch: int = 16
  max_output_tokens: int = 0
  template: templates.JudgeTemplate = templates.DEFAULT_JUDGE
  style: prompts.PromptStyle = prompts.DEFAULT_STYLE

  def __post_init__(self):
    if not 0.0 <= self.tie_margin < 1.0:
      raise io.EvalError(f"judge: tie_margin must be in [0, 1), found {self.tie_margin}")
    if self.max_output_tokens < 0:
      raise io.EvalError(f"judge: max_output_tokens must be >= 0, found {self.max_output_tokens}")


@dataclasses.dataclass(frozen=True)
class Pair:
  instruction: str
  output_a: str
  output_b: str
  generator_a: str
  generator_b: str
  where_a: str
  where_b: str


def match(a_items: Sequence[tuple[str, dict]], b_items: Sequence[tuple[str, dict]]) -> tuple[list[Pair], list[str], list[str]]:
  """Pairs records by instruction, in A's order: the k-th copy of an instruction in A meets the k-th in B.

  Returns (pairs, where of A's unmatched records, where of B's unmatched records).
  """
  b_by_instruction: dict[str, collections.deque] = collections.defaultdict(collections.deque)
  for where, rec in b_items:
    b_by_instruction[rec["instruction"]].append((where, rec))
  pairs, unmatched_a = [], []
  for where, rec in a_items:
    queue = b_by_instruction.get(rec["instruction"])
    if not queue:
      unmatched_a.append(where)
      continue
    where_b, rec_b = queue.popleft()
    pairs.append(Pair(rec["instruction"], rec["output"], rec_b["output"], str(rec.get("generator", "")),
                      str(rec_b.get("generator", "")), where, where_b))
  unmatched_b = [w for q in b_by_instruction.values() for w, _ in q]
  return pairs, unmatched_a, unmatched_b


def verdict(d_first: float, d_second: float, tie_margin: float) -> dict:
  """The item's verdict for A from its two A-favouring log-odds (see the module docstring)."""
  d_first, d_second = float(d_first), float(d_second)
  # tanh is odd, so swapping A and B (negating both d) negates the margin exactly.
  margin = (math.tanh(d_first / 2) + math.tanh(d_second / 2)) / 2
  if d_first > 0 and d_second > 0:
    result, reason = ("win", "agree") if margin >= tie_margin else ("tie", "below_margin")
  elif d_first < 0 and d_second < 0:
    result, reason = ("loss", "agree") if -margin >= tie_margin else ("tie", "below_margin")
  else:
    result, reason = "tie", "orders_disagree"
  return {"verdict": result, "reason": reason, "preference": (1.0 + margin) / 2, "margin": margin,
          "p_a_first": _sigmoid(d_first), "p_a_second": _sigmoid(d_second)}


def _sigmoid(x: float) -> float:
  return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def win_rate(verdicts: Sequence[str]) -> tuple[float, float | None]:
  """(win rate of A, its standard error) with ties counting half; see WIN_RATE_FORMULA."""
  if not verdicts:
    raise io.EvalError("judge: no verdicts to summarise")
  x = np.array([VERDICT_SCORE[v] for v in verdicts], np.float64)
  rate = float(x.mean())
  n = len(x)
  se = float(np.sqrt(((x - rate) ** 2).sum() / (n * (n - 1)))) if n > 1 else None
  return rate, se


def _truncate(tok, text: str, max_tokens: int) -> str:
  if max_tokens <= 0:
    return text
  ids = tok.encode(text)
  return text if len(ids) <= max_tokens else tok.decode(ids[:max_tokens])


def judge_pairs(lm, pairs: Sequence[Pair], config: JudgeConfig = JudgeConfig()) -> list[dict]:
  """One verdict row per pair, in order. Every distinct prompt is scored once, in one batched call."""
  tok = lm.tokenizer
  if tok is None:
    raise io.EvalError(f"judge: the model at {lm.path} has no tokenizer file; judging needs one")
  tag = tag_text(config.tag, config.style)
  opts = config.template.options
  contexts: dict[tuple[int, ...], int] = {}
  option_ids = None
  refs = []  # per pair: (index of the A-first context, index of the B-first context)
  limit = lm.cfg.max_position_embeddings
  for i, p in enumerate(pairs):
    a = _truncate(tok, p.output_a, config.max_output_tokens)
    b = _truncate(tok, p.output_b, config.max_output_tokens)
    ref = []
    for first, second in ((a, b), (b, a)):
      text = templates.judge_context(p.instruction, first, second, config.template, tag, config.style)
      ctx, ids = templates.option_query(tok, text, opts)
      if option_ids is None:
        option_ids = ids
      elif ids != option_ids:
        raise io.EvalError(f"judge: {p.where_a}: the verdict tokens {ids} differ from the first item's "
                           f"{option_ids}; the template's lead must end the same way for every item")
      if len(ctx) >= limit:
        raise io.EvalError(f"judge: {p.where_a} / {p.where_b}: the judge prompt is {len(ctx)} tokens, at or over "
                           f"the model's {limit} positions; pass max_output_tokens to cut the answers")
      ref.append(contexts.setdefault(tuple(ctx), len(contexts)))
    refs.append(ref)
  if not pairs:
    return []
  # Scored in a canonical order (sorted token tuples) so that judging (A, B) and (B, A) runs the very same
  # batches: the log-odds are then exact negatives of each other, not merely close.
  order = sorted(contexts, key=lambda c: (len(c), c))
  logp = lm.scorer(SampleConfig(score_batch=config.batch)).candidate_logprobs([list(c) for c in order], option_ids)
  logp = logp.astype(np.float64)
  row_of = {contexts[c]: r for r, c in enumerate(order)}
  rows = []
  for p, (first_ix, second_ix) in zip(pairs, refs):
    lp_first, lp_second = logp[row_of[first_ix]], logp[row_of[second_ix]]
    d_first = lp_first[0] - lp_first[1]  # A is answer 1 here
    d_second = lp_second[1] - lp_second[0]  # A is answer 2 here
    v = verdict(d_first, d_second, config.tie_margin)
    rows.append({
      "instruction": p.instruction, "output_a": p.output_a, "output_b": p.output_b,
      "generator_a": p.generator_a, "generator_b": p.generator_b, "where_a": p.where_a, "where_b": p.where_b,
      **v, "d_a_first": float(d_first), "d_a_second": float(d_second),
      # How much of the next-token distribution the two verdict tokens hold: near 0 means the judge is not
      # answering the question at all, whatever the ratio says.
      "option_mass": float((np.exp(lp_first).sum() + np.exp(lp_second).sum()) / 2),
      # Which position the judge preferred in each order, for the position-bias statistic.
      "first_position_preferred": [bool(lp_first[0] > lp_first[1]), bool(lp_second[0] > lp_second[1])],
    })
  return rows


def summarize(rows: Sequence[dict], tie_margin: float) -> dict:
  """Counts, win rate with standard error, and the judge's diagnostics."""
  verdicts = [r["verdict"] for r in rows]
  rate, se = win_rate(verdicts)
  reasons = collections.Counter(r["reason"] for r in rows if r["verdict"] == "tie")
  positions = [f for r in rows for f in r["first_position_preferred"]]
  return {
    "n": len(rows),
    "wins": verdicts.count("win"),
    "losses": verdicts.count("loss"),
    "ties": verdicts.count("tie"),
    "ties_orders_disagree": reasons.get("orders_disagree", 0),
    "ties_below_margin": reasons.get("below_margin", 0),
    "win_rate": rate,
    "standard_error": se,
    "win_rate_formula": WIN_RATE_FORMULA,
    "tie_margin": tie_margin,
    "mean_preference": float(np.mean([r["preference"] for r in rows])),
    # 0.5 for a judge without position bias; near 0 or 1, the verdicts are mostly orders_disagree ties.
    "first_position_preferred": float(np.mean(positions)),
    "mean_option_mass": float(np.mean([r["option_mass"] for r in rows])),
  }


def run(lm, outputs_a: epath.PathLike, outputs_b: epath.PathLike, output: epath.PathLike | None = None,
        verdicts_path: epath.PathLike | None = None, config: JudgeConfig = JudgeConfig(),
        max_items: int = 0) -> dict:
  """Judges file A against file B; writes the per-item verdicts (JSONL) and the summary (JSON) atomically."""
  pairs, unmatched_a, unmatched_b = match(io.read_outputs(outputs_a), io.read_outputs(outputs_b))
  if unmatched_a or unmatched_b:
    log.warning("judge: %d records of %s and %d of %s have no match by instruction; judging the %d matched",
                len(unmatched_a), outputs_a, len(unmatched_b), outputs_b, len(pairs))
  if not pairs:
    raise io.EvalError(f"judge: no instruction of {outputs_a} appears in {outputs_b}; nothing to judge")
  if max_items:
    pairs = pairs[:max_items]
  rows = judge_pairs(lm, pairs, config)
  if verdicts_path:
    records.write_jsonl(verdicts_path, rows)
  generators = lambda key: sorted({r[key] for r in rows})
  summary = {
    "judge": lm.path, "outputs_a": str(outputs_a), "outputs_b": str(outputs_b),
    "generator_a": generators("generator_a"), "generator_b": generators("generator_b"),
    **summarize(rows, config.tie_margin),
    "unmatched_a": len(unmatched_a), "unmatched_b": len(unmatched_b),
    "tag": config.tag, "verdicts": str(verdicts_path) if verdicts_path else None,
  }
  io.write_summary(output, summary)
  return summary

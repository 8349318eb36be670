"""Multiple-choice accuracy from log-likelihoods (MMLU-style files), zero-shot or k-shot.

Input: JSONL, one question per line: `question` (string), `choices` (list of >= 2 non-empty strings),
`answer` (0-based index, or a letter A, B, ...), optional `subject`. The prompt (hb_jax/eval/templates.py) is
MMLU's header, k solved examples, then `{question}\\nAnswer:`; each choice is scored as the continuation
` {choice}` (cloze) or ` {letter}` after the choices are listed (letters). The prediction is the choice with
the highest summed log-likelihood (`accuracy`) and, separately, with the highest log-likelihood per
continuation token (`accuracy_per_token`, which stops long choices losing for their length). Ties go to the
earlier choice. All choices of all questions are scored in one batched `loglikelihood` call.

Shots: from a dev file, the first k dev questions of the item's subject in file order, then others in file
order (MMLU's convention: its dev split has 5 per subject); from the evaluated file itself, k other questions
of the same subject ranked by a hash of (item, candidate), so the choice is deterministic, differs between
items, and does not depend on the file's order. A question never serves as its own example.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np
from etils import epath

from hb_jax.config import SampleConfig
from hb_jax.data import records
from hb_jax.eval import io, templates
from hb_jax.sample import plan


@dataclasses.dataclass(frozen=True)
class MCItem:
  question: str
  choices: tuple[str, ...]
  answer: int
  subject: str
  where: str  # file:line

  @property
  def key(self) -> str:
    return records.content_id("mc", self.question, *self.choices)


@dataclasses.dataclass(frozen=True)
class MCConfig:
  """`shots`: solved examples before each question; `format`: cloze | letters; `batch`: scoring batch."""
  shots: int = 0
  format: str = "cloze"
  batch: int = 16
  seed: int = 0  # only for shots drawn from the evaluated file

  def __post_init__(self):
    if self.shots < 0:
      raise io.EvalError(f"multiple choice: shots must be >= 0, found {self.shots}")
    if self.format not in templates.MC_FORMATS:
      raise io.EvalError(f"multiple choice: expected format in {templates.MC_FORMATS}, found {self.format!r}")


def parse_item(where: str, obj) -> MCItem:
  """One record -> MCItem; a malformed one raises EvalError naming `where` and the offending field."""
  if not isinstance(obj, dict):
    raise io.EvalError(f"{where}: expected a JSON object, found {type(obj).__name__}")
  question = obj.get("question")
  if not isinstance(question, str) or not question.strip():
    raise io.EvalError(f"{where}: expected 'question' to be a non-empty string, found {question!r}")
  choices = obj.get("choices")
  if not isinstance(choices, list) or len(choices) < 2:
    raise io.EvalError(f"{where}: expected 'choices' to be a list of at least 2 strings, found {choices!r}")
  for i, c in enumerate(choices):
    if not isinstance(c, str) or not c.strip():
      raise io.EvalError(f"{where}: expected choice {i} to be a non-empty string, found {c!r}")
  if len(choices) > len(templates.LETTERS):
    raise io.EvalError(f"{where}: expected at most {len(templates.LETTERS)} choices, found {len(choices)}")
  answer = obj.get("answer")
  if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in templates.LETTERS:
    index = templates.LETTERS.index(answer.strip().upper())
  elif isinstance(answer, int) and not isinstance(answer, bool):
    index = answer
  else:
    raise io.EvalError(f"{where}: expected 'answer' to be a choice index or a letter A-"
                       f"{templates.LETTERS[len(choices) - 1]}, found {answer!r}")
  if not 0 <= index < len(choices):
    raise io.EvalError(f"{where}: 'answer' {answer!r} is out of range for {len(choices)} choices")
  subject = obj.get("subject", "")
  if subject is None:
    subject = ""
  if not isinstance(subject, str):
    raise io.EvalError(f"{where}: expected 'subject' to be a string, found {type(subject).__name__}")
  return MCItem(question, tuple(choices), index, subject, where)


def read_items(path: epath.PathLike) -> list[MCItem]:
  """All questions of a JSONL file (`.gz` too), in order; JSON errors name file:line as well."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such file")
  return [parse_item(f"{path}:{lineno}", obj) for lineno, obj in records.iter_jsonl(path)]


def select_shots(items: Sequence[MCItem], k: int, dev: Sequence[MCItem] | None = None,
                 seed: int = 0) -> list[list[MCItem]]:
  """The k examples shown before each item (see the module docstring for the rule)."""
  if k == 0:
    return [[] for _ in items]
  out = []
  if dev is not None:
    for it in items:
      pool = [d for d in dev if d.question != it.question]
      same = [d for d in pool if d.subject == it.subject]
      chosen = (same + [d for d in pool if d.subject != it.subject])[:k]
      if len(chosen) < k:
        raise io.EvalError(f"{it.where}: {k} shots requested but the dev file has only {len(chosen)} usable examples")
      out.append(chosen)
    return out
  by_subject: dict[str, list[MCItem]] = collections.defaultdict(list)
  for it in items:
    by_subject[it.subject].append(it)
  for it in items:
    rank = lambda c: plan.seed_from_id(f"{it.key}\x00{c.key}", seed)
    same = sorted((c for c in by_subject[it.subject] if c.question != it.question), key=rank)
    chosen = same[:k]
    if len(chosen) < k:  # a small subject borrows from the others, in the same hashed order
      others = sorted((c for c in items if c.subject != it.subject and c.question != it.question), key=rank)
      chosen += others[:k - len(chosen)]
    if len(chosen) < k:
      raise io.EvalError(f"{it.where}: {k} shots requested but the file has only {len(chosen)} other questions")
    out.append(chosen)
  return out


def context_text(item: MCItem, shots: Sequence[MCItem], fmt: str = "cloze") -> str:
  return templates.mc_context(item.question, item.choices, item.subject,
                              [(s.question, s.choices, s.answer) for s in shots], fmt)


def split_tokens(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """(context ids with BOS, continuation ids), cut from the encoding of the whole text.

  Encoding the whole text gives the tokens the model would see (a separate encoding of ` Paris` would start
  with a stray word-boundary piece); the cut is where the context's own encoding stops matching, so a piece
  merged across the boundary is scored as part of the continuation.
  """
  whole = tok.encode(context + continuation, bos=True)
  ctx = tok.encode(context, bos=True)
  n = plan.common_prefix_length([whole, ctx])
  n = min(n, len(whole) - 1)  # the continuation keeps at least one token
  return whole[:n], whole[n:]


def evaluate(lm, items: Sequence[MCItem], config: MCConfig = MCConfig(),
             dev: Sequence[MCItem] | None = None) -> tuple[dict, list[dict]]:
  """(summary, per-question details) for `items` under `lm`."""
  tok = lm.tokenizer
  if tok is None:
    raise io.EvalError(f"multiple choice: the model at {lm.path} has no tokenizer file; scoring text needs one")
  if not items:
    raise io.EvalError("multiple choice: no questions to evaluate")
  shots = select_shots(items, config.shots, dev, config.seed)
  contexts, continuations, owner = [], [], []
  limit = lm.cfg.max_position_embeddings
  for q, (it, sh) in enumerate(zip(items, shots)):
    text = context_text(it, sh, config.format)
    for c in range(len(it.choices)):
      ctx, cont = split_tokens(tok, text, templates.mc_answer(it.choices, c, config.format))
      if len(ctx) + len(cont) > limit:
        raise io.EvalError(f"{it.where}: question with {config.shots} shots and choice {c} is "
                           f"{len(ctx) + len(cont)} tokens, over the model's {limit} positions; use fewer shots")
      contexts.append(ctx)
      continuations.append(cont)
      owner.append(q)
  ll = lm.scorer(SampleConfig(score_batch=config.batch)).loglikelihood(contexts, continuations).astype(np.float64)
  details, start = [], 0
  for q, it in enumerate(items):
    n = len(it.choices)
    lls = ll[start:start + n]
    lens = np.array([len(continuations[start + c]) for c in range(n)], np.float64)
    start += n
    pred, pred_norm = int(np.argmax(lls)), int(np.argmax(lls / lens))
    details.append({
      "where": it.where, "subject": it.subject, "answer": it.answer, "pred": pred, "pred_per_token": pred_norm,
      "correct": pred == it.answer, "correct_per_token": pred_norm == it.answer,
      "loglikelihoods": [float(x) for x in lls], "tokens": [int(x) for x in lens],
    })
  return summarize(details, items), details


def _accuracy(rows: Sequence[dict], items: Sequence[MCItem]) -> dict:
  return {
    "n": len(rows),
    "accuracy": float(np.mean([r["correct"] for r in rows])),
    "accuracy_per_token": float(np.mean([r["correct_per_token"] for r in rows])),
    "chance": float(np.mean([1.0 / len(it.choices) for it in items])),
  }


def summarize(details: Sequence[dict], items: Sequence[MCItem]) -> dict:
  """Overall (micro) accuracy, per-subject accuracy, and the mean over subjects (macro)."""
  by_subject: dict[str, list[int]] = collections.defaultdict(list)
  for i, it in enumerate(items):
    by_subject[it.subject or "unspecified"].append(i)
  subjects = {s: _accuracy([details[i] for i in ix], [items[i] for i in ix]) for s, ix in sorted(by_subject.items())}
  return {
    **_accuracy(details, items),
    "subjects": subjects,
    "macro_accuracy": float(np.mean([v["accuracy"] for v in subjects.values()])),
    "macro_accuracy_per_token": float(np.mean([v["accuracy_per_token"] for v in subjects.values()])),
  }


def run(lm, input_path: epath.PathLike, output: epath.PathLike | None = None, config: MCConfig = MCConfig(),
        dev_path: epath.PathLike | None = None, details_path: epath.PathLike | None = None,
        max_items: int = 0) -> dict:
  """Reads the questions (and dev examples), evaluates, writes the summary (JSON) and details (JSONL)."""
  items = read_items(input_path)
  if max_items:
    items = items[:max_items]
  dev = read_items(dev_path) if dev_path else None
  summary, details = evaluate(lm, items, config, dev)
  summary = {"model": lm.path, "input": str(input_path), "dev": str(dev_path) if dev_path else None,
             "shots": config.shots, "format": config.format, **summary}
  if details_path:
    records.write_jsonl(details_path, details)
  io.write_summary(output, summary)
  return summary

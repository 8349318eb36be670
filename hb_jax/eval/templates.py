"""Prompt templates of the evaluators (the method's own templates live in hb_jax/data/prompts.py).

  judge            `[INST] <JUDGE_PROMPT around the instruction and two answers>[\\n\\n{tag}] [/INST] Better answer:`
                   -> the next token is " 1" or " 2"; the verdict compares p("1") with p("2") there, so no text
                   is decoded and nothing needs parsing.
  multiple choice  MMLU's layout: `The following are multiple choice questions (with answers) about {subject}.`,
                   k solved examples, then `{question}\\nAnswer:` -> ` {choice text}` (cloze, scored by
                   log-likelihood of the text) or, with the choices listed as `A. ...`, ` {letter}` (letters).

Templates produce text only; BOS is a token id the caller adds.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

from hb_jax.data import prompts

# Short on purpose: the demo's models have 512 positions, and two answers must fit beside it.
JUDGE_PROMPT = (
  "Below is an instruction from an user and two candidate answers. Decide which answer is the better "
  "response from an AI Assistant: more helpful, correct, complete and clearly written. Neither the order "
  "of the answers nor their length should decide.\n\n"
  "Instruction:\n{instruction}\n\n"
  "Answer 1:\n{output_1}\n\n"
  "Answer 2:\n{output_2}\n\n"
  "Which answer is better, 1 or 2?"
)
JUDGE_FIELDS = ("instruction", "output_1", "output_2")
_FIELD_RE = re.compile(r"\{(instruction|output_1|output_2)\}")


@dataclasses.dataclass(frozen=True)
class JudgeTemplate:
  """The judge's question. `prompt` holds `{instruction}`, `{output_1}`, `{output_2}` once each; the answer
  starts with `lead` and the verdict is read at the next token, one of `options` (first answer, second)."""
  prompt: str = JUDGE_PROMPT
  lead: str = "Better answer:"
  options: tuple[str, str] = ("1", "2")

  def __post_init__(self):
    for field in JUDGE_FIELDS:
      if self.prompt.count("{" + field + "}") != 1:
        raise ValueError(f"JudgeTemplate.prompt: expected exactly one '{{{field}}}', found "
                         f"{self.prompt.count('{' + field + '}')} in {self.prompt[:80]!r}...")
    if len(self.options) != 2 or len(set(self.options)) != 2 or not all(o.strip() for o in self.options):
      raise ValueError(f"JudgeTemplate.options: expected two distinct non-empty strings, found {self.options!r}")

  def body(self, instruction: str, first: str, second: str) -> str:
    # One pass over the template: an answer that itself contains "{output_2}" is left as it is.
    values = {"instruction": instruction, "output_1": first, "output_2": second}
    return _FIELD_RE.sub(lambda m: values[m.group(1)], self.prompt)


DEFAULT_JUDGE = JudgeTemplate()


def judge_context(instruction: str, first: str, second: str, template: JudgeTemplate = DEFAULT_JUDGE,
                  tag: str = "", style: prompts.PromptStyle = prompts.DEFAULT_STYLE) -> str:
  """The text right before the verdict token: the judge question as a forward prompt, then `lead`.

  Wrapped like any instruction the model was trained on (chat wrapper, optional tag), as curation does.
  """
  return (prompts.forward_prompt(template.body(instruction, first, second), tag, style)
          + style.answer_prefix + template.lead)


option_query = prompts.option_query  # the one next-token split, shared with curation's digits


# ------------------------------------------------------------------------------------------- multiple choice
MC_FORMATS = ("cloze", "letters")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def mc_header(subject: str) -> str:
  """MMLU's first line; subjects are written as in MMLU's files (`high_school_physics`) or plainly."""
  about = f" about {subject.replace('_', ' ').strip()}" if subject.strip() else ""
  return f"The following are multiple choice questions (with answers){about}.\n\n"


def mc_question(question: str, choices: Sequence[str], fmt: str = "cloze") -> str:
  """`{question}\\nAnswer:`; the letters format lists `A. choice` lines between them."""
  if fmt == "cloze":
    return f"{question}\nAnswer:"
  if fmt == "letters":
    return question + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(choices)) + "\nAnswer:"
  raise ValueError(f"multiple choice: expected format in {MC_FORMATS}, found {fmt!r}")


def mc_answer(choices: Sequence[str], index: int, fmt: str = "cloze") -> str:
  """What follows `Answer:` for choice `index`: ` {choice text}` (cloze) or ` {letter}` (letters)."""
  return " " + (choices[index] if fmt == "cloze" else LETTERS[index])


def mc_context(question: str, choices: Sequence[str], subject: str,
               shots: Sequence[tuple[str, Sequence[str], int]] = (), fmt: str = "cloze") -> str:
  """Header, the solved `shots` (question, choices, answer index) one blank line apart, then the question."""
  solved = "".join(mc_question(q, c, fmt) + mc_answer(c, a, fmt) + "\n\n" for q, c, a in shots)
  return mc_header(subject) + solved + mc_question(question, choices, fmt)

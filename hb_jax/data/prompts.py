"""Every prompt template of the method, and the parser for self-curation ratings.

Training, generation and scoring all build their text here, so a template changes in one place.
Templates produce text only; BOS/EOS are token ids the caller adds (BOS starts every sequence as the
tokenizer's settings say, EOS ends every training target). An instruct model's own chat template can replace
the `[INST]` wrapper (`chat_style`).

  forward   `[INST] {instruction}\\n\\n{tag} [/INST]`  ->  ` {output}` + EOS
  backward  `[INST] <follow-up paper's prompt around {output}> [/INST]`  ->  ` {instruction}` + EOS
  curation  `[INST] <paper's Table-1 prompt with {instruction}\\n{output}> [/INST]`  -> reasoning, `Score: k`
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

TAG_SEED = "Answer in the style of an AI Assistant."
TAG_AUGMENTED = "Answer with knowledge from web search."

# The self-curation prompt of the paper (Table 1), verbatim. The paper ends it with the two placeholder
# lines `<generated instruction>` and `<output>`; `CURATION_PROMPT_HEADER` is everything before them and
# the candidate is appended as `{instruction}\n{output}`.
CURATION_PROMPT_HEADER = (
  "Below is an instruction from an user and a candidate answer. Evaluate whether or not the answer is a "
  "good example of how AI Assistant should respond to the user's instruction. Please assign a score using "
  "the following 5-point scale:\n"
  "1: It means the answer is incomplete, vague, off-topic, controversial, or not exactly what the user "
  "asked for. For example, some content seems missing, numbered list does not start from the beginning, "
  "the opening sentence repeats user's question. Or the response is from another person's perspective "
  "with their personal experience (e.g. taken from blog posts), or looks like an answer from a forum. Or "
  "it contains promotional text, navigation text, or other irrelevant information.\n"
  "2: It means the answer addresses most of the asks from the user. It does not directly address the "
  "user's question. For example, it only provides a high-level methodology instead of the exact solution "
  "to user's question.\n"
  "3: It means the answer is helpful but not written by an AI Assistant. It addresses all the basic asks "
  "from the user. It is complete and self contained with the drawback that the response is not written "
  "from an AI assistant's perspective, but from other people's perspective. The content looks like an "
  "excerpt from a blog post, web page, or web search results. For example, it contains personal "
  "experience or opinion, mentions comments section, or share on social media, etc.\n"
  "4: It means the answer is written from an AI assistant's perspective with a clear focus of addressing "
  "the instruction. It provide a complete, clear, and comprehensive response to user's question or "
  "instruction without missing or irrelevant information. It is well organized, self-contained, and "
  "written in a helpful tone. It has minor room for improvement, e.g. more concise and focused.\n"
  "5: It means it is a perfect answer from an AI Assistant. It has a clear focus on being a helpful AI "
  "Assistant, where the response looks like intentionally written to address the user's question or "
  "instruction without any irrelevant sentences. The answer provides high quality content, demonstrating "
  "expert knowledge in the area, is very well written, logical, easy-to-follow, engaging and insightful.\n"
  "\n"
  "Please first provide a brief reasoning you used to derive the rating score, and then write "
  "\"Score: <rating>\" in the last line.\n"
  "\n"
)
CURATION_PLACEHOLDERS = "<generated instruction>\n<output>"

# The backward-model prompt of the follow-up paper (HUMPBACK.md), verbatim; `{response}` is the segment.
BACKWARD_PROMPT = (
  "Below is a candidate answer to a question or instruction from an user. Write the most likely question "
  "to which the text below would be a great answer.\n\n{response}\n\nAnswer in the style of an AI Assistant."
)


@dataclasses.dataclass(frozen=True)
class PromptStyle:
  """The chat wrapper and tag conventions; the defaults are the paper's LLaMA-2-style `[INST]` format.

  `chat` must hold `{prompt}` once. `tag_separator` goes between the instruction and its tag.
  `answer_prefix` starts every target and generation (the space after `[/INST]`).
  A model's own chat template replaces `chat` in a ChatTemplateStyle (`from_chat_template`, `chat_style`).
  """
  chat: str = "[INST] {prompt} [/INST]"
  tag_separator: str = "\n\n"
  answer_prefix: str = " "
  seed_tag: str = TAG_SEED
  augmented_tag: str = TAG_AUGMENTED
  backward_prompt: str = BACKWARD_PROMPT
  curation_header: str = CURATION_PROMPT_HEADER

  def __post_init__(self):
    if self.chat.count("{prompt}") != 1:
      raise ValueError(f"PromptStyle.chat: expected exactly one '{{prompt}}', found {self.chat!r}")
    if self.backward_prompt.count("{response}") != 1:
      raise ValueError(
        f"PromptStyle.backward_prompt: expected exactly one '{{response}}', found {self.backward_prompt!r}")

  @classmethod
  def from_chat_template(cls, template: str, special_tokens: Mapping[str, str] | None = None,
                         **overrides) -> "ChatTemplateStyle":
    """A style whose wrapper is a model's Jinja chat template (tags and prompts as the paper's)."""
    fields = dict(chat_template=template, template_tokens=tuple(sorted((special_tokens or {}).items())),
                  answer_prefix="")
    fields.update(overrides)
    return ChatTemplateStyle(**fields)

  def wrap(self, prompt: str) -> str:
    # str.replace, not str.format: the template may be user-supplied and hold other braces.
    return self.chat.replace("{prompt}", prompt)


@dataclasses.dataclass(frozen=True)
class ChatTemplateStyle(PromptStyle):
  """A PromptStyle that wraps each prompt by rendering it as the one user message of a conversation with the
  assistant's turn opened, as transformers' `apply_chat_template(..., add_generation_prompt=True)` does (with
  any default system prompt the template injects); `chat` is unused. A subclass, so the paper's styles keep
  their fields (and the settings hashed from them) as they were."""
  chat_template: str = ""
  # The special tokens the template reads (bos_token, eos_token, ...), as sorted (name, text) pairs.
  template_tokens: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    super().__post_init__()
    probe = "\x00prompt\x00"
    found = self.wrap(probe).count(probe)
    if found != 1:
      raise ValueError("PromptStyle.chat_template: expected the template to write the user's message once, "
                       f"found it {found} times in {self.wrap(probe)!r}")

  def wrap(self, prompt: str) -> str:
    from hb_jax.data import chat_template
    return chat_template.render(self.chat_template, [{"role": "user", "content": prompt}],
                                add_generation_prompt=True, **dict(self.template_tokens))


DEFAULT_STYLE = PromptStyle()
# The bare format of the paper's AlpacaEval configs, for baselines trained without tags.
NO_TAG_STYLE = PromptStyle(seed_tag="", augmented_tag="")


def chat_style(tokenizer: Any, **overrides) -> PromptStyle:
  """The style of a model's own chat template (an instruct model as base, rater or judge), or the paper's
  `[INST]` style when its tokenizer has no template (base LLaMA models)."""
  if getattr(tokenizer, "chat_template", None):
    return PromptStyle.from_chat_template(tokenizer.chat_template, tokenizer.special_tokens, **overrides)
  return dataclasses.replace(DEFAULT_STYLE, **overrides)

TAG_MODES = ("source", "seed", "augmented", "both", "none")


def tag_for(source: str | None, mode: str = "source", style: PromptStyle = DEFAULT_STYLE) -> str:
  """The tag sentence appended to a forward prompt.

  mode "source": by the example's source (training on mixed data); "seed"/"augmented": that tag always;
  "both": both sentences (the paper's best inference setting; our order: web-search first, then the
  AI-Assistant sentence, so the style instruction is what the model reads last); "none": no tag.
  """
  if mode == "none":
    return ""
  if mode == "both":
    return " ".join(t for t in (style.augmented_tag, style.seed_tag) if t)
  if mode == "source":
    if source not in ("seed", "augmented"):
      raise ValueError(f"tag_for: expected source 'seed' or 'augmented' with mode='source', found {source!r}")
    mode = source
  if mode == "seed":
    return style.seed_tag
  if mode == "augmented":
    return style.augmented_tag
  raise ValueError(f"tag_for: expected mode in {TAG_MODES}, found {mode!r}")


def forward_prompt(instruction: str, tag: str = "", style: PromptStyle = DEFAULT_STYLE) -> str:
  """`[INST] {instruction}\\n\\n{tag} [/INST]`; without a tag, `[INST] {instruction} [/INST]`."""
  body = instruction + (style.tag_separator + tag if tag else "")
  return style.wrap(body)


def forward_target(output: str, style: PromptStyle = DEFAULT_STYLE) -> str:
  """` {output}`; the caller appends EOS as a token id."""
  return style.answer_prefix + output


def backward_prompt(output: str, style: PromptStyle = DEFAULT_STYLE) -> str:
  """The backward model M_yx reads the answer (a seed output, or a web segment) and writes the question."""
  return style.wrap(style.backward_prompt.replace("{response}", output))


def backward_target(instruction: str, style: PromptStyle = DEFAULT_STYLE) -> str:
  return style.answer_prefix + instruction


def curation_prompt(instruction: str, output: str, style: PromptStyle = DEFAULT_STYLE, tag: str = "") -> str:
  """The paper's Table-1 prompt with the candidate filled in, inside the chat wrapper; a rater trained with
  tags reads it with its seed tag, as it reads any instruction."""
  return forward_prompt(style.curation_header + f"{instruction}\n{output}", tag, style)


def rating_context(instruction: str, output: str, reasoning: str | None = None,
                   style: PromptStyle = DEFAULT_STYLE, tag: str = "") -> str:
  """The text right before the rating digit, for reading p("1".."5") instead of sampling.

  Without reasoning the answer starts directly with `Score:`; with reasoning (the `generate` rater's own
  text, cut before an unfinished last line) it is `{reasoning}\\nScore:`. The digit follows after one
  space: see `rating_query` for the token-level split that is safe for both tokenizer backends.
  """
  answer = "Score:" if not (reasoning and reasoning.strip()) else reasoning.rstrip() + "\nScore:"
  return curation_prompt(instruction, output, style, tag) + style.answer_prefix + answer


RATING_DIGITS = ("1", "2", "3", "4", "5")


@dataclasses.dataclass(frozen=True)
class RatingQuery:
  """Token ids for probability-based rating: p(rating = k) is read at `digit_ids[k - 1]` after `context`."""
  context: list[int]
  digit_ids: list[int]


def option_query(tok: Any, text: str, options: Sequence[str], bos: bool = True) -> tuple[list[int], list[int]]:
  """(context ids, one token id per option) for reading p(option) right after `text + " "`.

  Encodes each full string and checks they differ only in their last token, so the split is the one the
  model would see had it written the option itself (sentencepiece: `▁`,`1`; LLaMA-3 BPE: `Ġ1`).
  """
  full = [tok.encode(text + " " + o, bos=bos) for o in options]
  context = full[0][:-1]
  for o, ids in zip(options, full):
    if ids[:-1] != context:
      raise ValueError(
        f"option_query: expected '...{text[-20:]} {o}' to differ from the other options only in its last "
        f"token; found last tokens {[tok.id_to_piece(i) for i in ids[max(0, len(context) - 2):]]} "
        f"(is {o!r} a single piece of this tokenizer?)")
  ids = [f[-1] for f in full]
  if len(set(ids)) != len(options):
    raise ValueError(f"option_query: expected {len(options)} distinct option tokens, found {ids}")
  return context, ids


def rating_query(tok: Any, instruction: str, output: str, reasoning: str | None = None,
                 style: PromptStyle = DEFAULT_STYLE, bos: bool = True, tag: str = "") -> RatingQuery:
  """Splits `rating_context(...) + " k"` into shared context tokens and one token per digit k (the split
  the model sees in its own "Score: k": sentencepiece gives `▁`,`4`; LLaMA-3 BPE gives `Ġ4`)."""
  context, digit_ids = option_query(tok, rating_context(instruction, output, reasoning, style, tag), RATING_DIGITS,
                                    bos)
  return RatingQuery(context=context, digit_ids=digit_ids)


# `Score:` optionally wrapped in markdown emphasis (`**Score:** 4`, `**Score: 4**`, `*Score*: 4`,
# `__Score: 4__`), then one digit 1-5 that is not the start of a longer number ("Score: 10" is no 1). A digit
# followed by `_` counts (`\b` would refuse `__Score: 4__`, since `_` is a word character).
SCORE_RE = re.compile(r"(?<![A-Za-z0-9])[*_]{0,3}Score[*_]{0,3}\s*:[*_]{0,3}\s*[*_]{0,3}([1-5])(?![0-9])")


def parse_rating(generated: str, prompt: str | None = None) -> int | None:
  """The integer of the last `Score: k` (k in 1..5) in the model's generated text, else None.

  Pass only the generation. If an API returned prompt + generation, pass the prompt too and it is cut off
  first, so a candidate answer that itself contains "Score: 5" cannot rate itself.
  """
  if prompt is not None and generated.startswith(prompt):
    generated = generated[len(prompt):]
  matches = SCORE_RE.findall(generated)
  return int(matches[-1]) if matches else None

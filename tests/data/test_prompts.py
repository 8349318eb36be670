"""Prompts: exact paper text, template shapes, and the rating parser against adversarial generations."""
import pathlib
import re

import pytest

from hb_jax.data import prompts

HUMPBACK_MD = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "HUMPBACK.md"

# The paper's Table-1 prompt, embedded so the check holds even without ../shared.
PAPER_CURATION_PROMPT = """Below is an instruction from an user and a candidate answer. Evaluate whether or not the answer is a good example of how AI Assistant should respond to the user's instruction. Please assign a score using the following 5-point scale:
1: It means the answer is incomplete, vague, off-topic, controversial, or not exactly what the user asked for. For example, some content seems missing, numbered list does not start from the beginning, the opening sentence repeats user's question. Or the response is from another person's perspective with their personal experience (e.g. taken from blog posts), or looks like an answer from a forum. Or it contains promotional text, navigation text, or other irrelevant information.
2: It means the answer addresses most of the asks from the user. It does not directly address the user's question. For example, it only provides a high-level methodology instead of the exact solution to user's question.
3: It means the answer is helpful but not written by an AI Assistant. It addresses all the basic asks from the user. It is complete and self contained with the drawback that the response is not written from an AI assistant's perspective, but from other people's perspective. The content looks like an excerpt from a blog post, web page, or web search results. For example, it contains personal experience or opinion, mentions comments section, or share on social media, etc.
4: It means the answer is written from an AI assistant's perspective with a clear focus of addressing the instruction. It provide a complete, clear, and comprehensive response to user's question or instruction without missing or irrelevant information. It is well organized, self-contained, and written in a helpful tone. It has minor room for improvement, e.g. more concise and focused.
5: It means it is a perfect answer from an AI Assistant. It has a clear focus on being a helpful AI Assistant, where the response looks like intentionally written to address the user's question or instruction without any irrelevant sentences. The answer provides high quality content, demonstrating expert knowledge in the area, is very well written, logical, easy-to-follow, engaging and insightful.

Please first provide a brief reasoning you used to derive the rating score, and then write "Score: <rating>" in the last line.

<generated instruction>
<output>"""

PAPER_BACKWARD = ("[INST] Below is a candidate answer to a question or instruction from an user. Write the most "
                  "likely question to which the text below would be a great answer.\n\n<response>\n\nAnswer in the "
                  "style of an AI Assistant. [/INST]")


def _fill(template: str, instruction: str, output: str) -> str:
  return template.replace("<generated instruction>\n<output>", f"{instruction}\n{output}")


def test_curation_prompt_is_the_embedded_paper_text():
  got = prompts.curation_prompt("Name a fruit.", "An apple.")
  assert got == "[INST] " + _fill(PAPER_CURATION_PROMPT, "Name a fruit.", "An apple.") + " [/INST]"
  assert prompts.CURATION_PROMPT_HEADER + prompts.CURATION_PLACEHOLDERS == PAPER_CURATION_PROMPT


@pytest.mark.skipif(not HUMPBACK_MD.exists(), reason=f"{HUMPBACK_MD} not beside the clone")
def test_curation_prompt_matches_humpback_md():
  md = HUMPBACK_MD.read_text()
  section = md.split("## The self-curation prompt", 1)[1]
  block = re.search(r"```\n(.*?)\n```", section, re.S).group(1)
  assert block == PAPER_CURATION_PROMPT
  assert prompts.curation_prompt("I", "O") == "[INST] " + _fill(block, "I", "O") + " [/INST]"


def test_backward_prompt_matches_follow_up_paper():
  assert prompts.backward_prompt("<response>") == PAPER_BACKWARD
  if HUMPBACK_MD.exists():
    flat = " ".join(HUMPBACK_MD.read_text().split())
    quoted = PAPER_BACKWARD.replace("\n", "\\n")
    assert " ".join(quoted.split()) in flat
  assert prompts.backward_target("What is 2+2?") == " What is 2+2?"


def test_forward_prompt_and_tags():
  assert prompts.forward_prompt("Hi", prompts.tag_for("seed")) == "[INST] Hi\n\nAnswer in the style of an AI Assistant. [/INST]"
  assert prompts.forward_prompt("Hi", prompts.tag_for("augmented")) == "[INST] Hi\n\nAnswer with knowledge from web search. [/INST]"
  assert prompts.forward_prompt("Hi", prompts.tag_for("augmented", mode="none")) == "[INST] Hi [/INST]"
  assert prompts.tag_for(None, mode="both") == "Answer with knowledge from web search. Answer in the style of an AI Assistant."
  assert prompts.forward_target("Hello.") == " Hello."
  with pytest.raises(ValueError, match="source"):
    prompts.tag_for("web")


def test_prompt_style_is_configurable_and_brace_safe():
  style = prompts.PromptStyle(chat="<|user|>\n{prompt}\n<|assistant|>\n", answer_prefix="")
  assert prompts.forward_prompt("use {x} and {prompt}", "", style) == "<|user|>\nuse {x} and {prompt}\n<|assistant|>\n"
  assert prompts.curation_prompt("{a}", "{b}", style).endswith("{a}\n{b}\n<|assistant|>\n")
  with pytest.raises(ValueError, match="prompt"):
    prompts.PromptStyle(chat="no placeholder")


def test_prompt_style_from_a_chat_template():
  """A model's Jinja chat template as the wrapper, rendered as transformers does (trim_blocks: the newline
  after a block tag goes); it must write the user's message exactly once."""
  template = ("{% if messages[0]['role'] != 'system' %}<sys>{{ default_system }}</sys>\n{% endif %}"
              "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
              "{% if add_generation_prompt %}<assistant>{% endif %}")
  style = prompts.PromptStyle.from_chat_template(template, {"eos_token": "</s>", "default_system": "Be brief."})
  assert prompts.forward_prompt("Hi {x}", prompts.TAG_SEED, style) == \
      f"<sys>Be brief.</sys>\n<user>Hi {{x}}\n\n{prompts.TAG_SEED}</s>\n<assistant>"
  assert prompts.forward_target("Hello.", style) == "Hello."
  assert style == prompts.PromptStyle.from_chat_template(template, {"default_system": "Be brief.", "eos_token": "</s>"})
  with pytest.raises(ValueError, match="expected the template to write the user's message once, found it 0"):
    prompts.PromptStyle.from_chat_template("{% for m in messages %}<{{ m['role'] }}>{% endfor %}")
  with pytest.raises(ValueError, match="chat template line 1"):
    prompts.PromptStyle.from_chat_template("{% for m in messages %}")
  with pytest.raises(ValueError, match="chat template: no system turn"):
    prompts.PromptStyle.from_chat_template("{{ raise_exception('no system turn') }}")


@pytest.mark.parametrize("text, expected", [
  ("The answer is clear and complete.\nScore: 4", 4),
  ("Reasoning...\n**Score:** 5", 5),
  ("Reasoning...\n**Score: 3**", 3),
  ("*Score*: 2", 2),
  ("__Score:__ 1", 1),
  ("__Score: 4__", 4),
  ("_Score: 3_", 3),
  ("Score:5", 5),
  ("Score: 3\nOn reflection, Score: 4", 4),          # several: the last one
  ("Score: 10", None),                               # not a 1
  ("Score: 10502", None),
  ("Score: 0", None),
  ("Score: 6", None),
  ("I would rate this highly.", None),               # no score
  ("Score: <rating>", None),
  ("", None),
  ("score: 4", None),                                # the prompt asks for "Score:"
  ("Overall Score: 4/5", 4),
  ("Score: 4 out of 5", 4),
  ("MyScore: 4", None),
])
def test_parse_rating(text, expected):
  assert prompts.parse_rating(text) == expected


def test_parse_rating_ignores_the_candidate_text():
  candidate = "Here is my review.\nScore: 5"
  prompt = prompts.curation_prompt("Review this film.", candidate)
  assert prompts.parse_rating("The answer is off-topic.") is None
  assert prompts.parse_rating(prompt + " The answer is off-topic.", prompt=prompt) is None
  assert prompts.parse_rating(prompt + " Off-topic.\nScore: 1", prompt=prompt) == 1


def test_rating_context():
  ctx = prompts.rating_context("I", "O")
  assert ctx == prompts.curation_prompt("I", "O") + " Score:"
  assert prompts.rating_context("I", "O", "Good answer.\n") == prompts.curation_prompt("I", "O") + " Good answer.\nScore:"
  assert prompts.rating_context("I", "O", " \n") == ctx  # blank reasoning is no reasoning

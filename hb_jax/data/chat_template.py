"""Chat templates (the Jinja strings in a model's tokenizer_config.json or GGUF), rendered as transformers does.

transformers compiles them in a sandboxed Jinja environment with `trim_blocks` and `lstrip_blocks`, the
`loopcontrols` extension, a `{% generation %}` block tag, `raise_exception`, `strftime_now` and a `tojson`
filter that does not escape HTML; the template sees `messages`, `add_generation_prompt`, the special tokens
(`bos_token`, `eos_token`, ...) and any extra keyword. Matching that environment is what makes a prompt
rendered here the prompt the model was tuned on.
"""
from __future__ import annotations

import datetime
import functools
import json
from typing import Any, Mapping, Sequence


class ChatTemplateError(ValueError):
  """A chat template does not compile, or raised an error while rendering (raise_exception)."""


@functools.lru_cache(maxsize=16)
def _compile(template: str):
  import jinja2
  from jinja2 import ext, nodes
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  class GenerationBlock(ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; renders its body."""
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[GenerationBlock, ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  try:
    return env.from_string(template)
  except jinja2.exceptions.TemplateSyntaxError as e:
    raise ChatTemplateError(f"chat template line {e.lineno}: {e.message}") from e


def render(template: str, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
           **variables) -> str:
  """The conversation `messages` ([{"role": ..., "content": ...}, ...]) as `template` writes it.

  `variables` are what transformers passes besides the messages: the special tokens (bos_token,
  eos_token, ...) and template options. tools and documents are None, as for a plain chat.
  """
  import jinja2

  for i, m in enumerate(messages):
    if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
      raise ChatTemplateError(f"messages[{i}]: expected a dict with a 'role' and 'content', found {m!r}")
  compiled = _compile(template)
  try:
    return compiled.render(messages=[dict(m) for m in messages], tools=None, documents=None,
                           add_generation_prompt=add_generation_prompt, **variables)
  except jinja2.exceptions.TemplateError as e:
    raise ChatTemplateError(f"chat template: {e}") from e

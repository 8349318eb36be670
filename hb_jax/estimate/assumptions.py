"""What the cost model assumes where the paper and the config are silent: data sizes, token lengths and
efficiencies (`Assumptions`, each printed with the estimate and overridable with --assume), and the mean
token counts of every sequence the pipeline trains on, generates from or scores that follow from them
(`Lengths`, from the prompt templates of hb_jax.data.prompts).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

from hb_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Assumptions:
  """What the paper does not say (and efficiencies); each is printed, each can be overridden."""
  # Data sizes: the paper's.
  seed_examples: int = 3200
  segments: int = 502_133
  candidates_per_segment: float = 1.0  # one sampled instruction per segment (empty ones are dropped: rare)
  curated_examples: int = 0  # 0: the paper's A5^(2) 41,821 for k >= 5, A4^(2) 195,043 for k >= 4 (per iteration)
  eval_items: int = 805  # AlpacaEval instructions (the paper configs leave inputs.heldout_jsonl to you)
  # Lengths, in tokens of the LLaMA sentencepiece vocabulary.
  chars_per_token: float = 4.0  # English web text; prompt templates are converted with it
  segment_tokens: float = 350.0  # mean segment: 600-3,000 characters kept, ~1,400 on average
  segment_max_tokens: int = 750  # 3,000 characters: sizes the largest length bucket of a batch
  seed_instruction_tokens: float = 50.0  # oasst1 first-turn prompts
  seed_output_tokens: float = 280.0  # oasst1 rank-0 replies
  generated_instruction_tokens: float = 40.0  # what M_yx writes per segment (EOS-terminated)
  rating_tokens: float = 100.0  # brief reasoning + "Score: k" (curation max_new_tokens caps it)
  # Ratings whose text holds no `Score: k` (curate.fallback reads them from p(1..5) after the reasoning): the
  # share a public 7B reproduction lost.
  unparsed_ratings: float = 0.45
  eval_instruction_tokens: float = 40.0
  eval_output_tokens: float = 300.0  # greedy answers (evaluate max_new_tokens caps it)
  eval_instruction_max_tokens: int = 480  # sizes the largest length bucket of an evaluation batch
  bucket_factor: float = 1.0 / math.log(2)  # power-of-two buckets: padded length ~1.44x the prompt on average
  worst_step_factor: float = 1.25  # the loader sizes rows for the most tokens any step of the run draws
  # Efficiencies.
  mfu: float = 0.4  # training and prefill: model FLOPs / peak on the rows that run
  decode_efficiency: float = 0.5  # achieved fraction of the decode roofline (kernels, sampling, host work)
  slot_utilisation: float = 0.9  # busy decode rows (bench/run.py sample measured 90% on mixed lengths)
  packing_efficiency: float = 0.9  # real tokens / row slots when packing examples into seq_len rows
  weight_bytes: float = 2.0  # bf16 model folders (convert with --param_dtype bfloat16; fp32 doubles traffic)
  kv_bytes: float = 2.0  # the cache is in the compute dtype (bf16 on accelerators)
  memory_headroom: float = 0.9  # usable share of HBM (XLA workspace, fragmentation)

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if v < 0:
        raise ConfigError(f"assumption {f.name} must be >= 0, found {v}")
    for key in ("mfu", "decode_efficiency", "slot_utilisation", "packing_efficiency", "memory_headroom"):
      if not 0 < getattr(self, key) <= 1:
        raise ConfigError(f"assumption {key} must be in (0, 1], found {getattr(self, key)}")

  def with_overrides(self, pairs: Iterable[str]) -> "Assumptions":
    """`name=value` strings (the CLI's --assume) -> a new Assumptions; unknown names are errors."""
    fields = {f.name: f for f in dataclasses.fields(self)}
    updates: dict[str, Any] = {}
    for pair in pairs:
      name, sep, value = pair.partition("=")
      if not sep or name not in fields:
        raise ConfigError(f"--assume {pair!r}: expected NAME=VALUE with NAME in {sorted(fields)}")
      kind = type(getattr(self, name))
      try:
        updates[name] = kind(float(value)) if kind is int else kind(value)
      except ValueError as e:
        raise ConfigError(f"--assume {pair!r}: {e}") from e
    return dataclasses.replace(self, **updates)


# The paper's curated set sizes per iteration, A5^(2) and A4^(2) (the default of `curated_examples`).
PAPER_A5, PAPER_A4 = 41_821, 195_043


def template_tokens(text: str, a: Assumptions) -> float:
  """A prompt template's length in tokens, from its characters."""
  return len(text) / a.chars_per_token


class Lengths:
  """Mean token counts of every sequence the pipeline trains on, generates from or scores."""

  def __init__(self, a: Assumptions, tags: bool):
    from hb_jax.data import prompts
    tag = prompts.TAG_SEED if tags else ""
    # +1 BOS, +1 EOS (training targets), the chat wrapper and the tag sentence.
    self.forward_template = template_tokens(prompts.forward_prompt("", tag) + prompts.forward_target(""), a) + 2
    self.backward_template = template_tokens(prompts.backward_prompt("") + prompts.backward_target(""), a) + 2
    self.curation_template = template_tokens(prompts.forward_prompt(prompts.CURATION_PROMPT_HEADER + "\n", tag),
                                             a) + 1
    # The rubric every rating prompt starts with ("[INST] " + the paper's header, after BOS) is prefilled once
    # and shared (hb_jax.sample.prefix); each candidate's own part is the rest of the template + its text.
    head = prompts.forward_prompt(prompts.CURATION_PROMPT_HEADER, "").split(prompts.CURATION_PROMPT_HEADER)[0]
    self.curation_prefix = template_tokens(head + prompts.CURATION_PROMPT_HEADER, a) + 1
    own = self.curation_template - self.curation_prefix + a.generated_instruction_tokens
    self.curation_suffix = own + a.segment_tokens
    self.curation_suffix_max = own + a.segment_max_tokens
    self.seed_forward = self.forward_template + a.seed_instruction_tokens + a.seed_output_tokens
    self.seed_backward = self.backward_template + a.seed_output_tokens + a.seed_instruction_tokens
    self.augmented_forward = self.forward_template + a.generated_instruction_tokens + a.segment_tokens
    self.augment_prompt = self.backward_template - 1 + a.segment_tokens
    self.augment_prompt_max = self.backward_template - 1 + a.segment_max_tokens
    self.likelihood_sequence = self.augmented_forward
    self.eval_prompt = self.forward_template - 1 + a.eval_instruction_tokens
    self.eval_prompt_max = self.forward_template - 1 + a.eval_instruction_max_tokens

"""Answers for a file of instructions, with the paper's decoding, in AlpacaEval's model-output format.

    outputs, summary = generate_outputs(lm, items, GenerateConfig(tag="both"))

Each prompt is the forward template of hb_jax/data/prompts.py (`[INST] {instruction}\\n\\n{tag} [/INST]`, or
`[INST] {instruction} [/INST]` without a tag), decoded with temperature 0.7 and top-p 0.9 by default. Row i
samples from a key derived from a hash of its instruction (and `seed`), and shared-prefix reuse is off, so an
answer depends on its instruction and the settings only: not on the file's order, its other instructions,
or the batch size (within DESIGN's logit tolerance).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

from etils import epath

from hb_jax.config import SampleConfig
from hb_jax.data import prompts
from hb_jax.eval import io
from hb_jax.sample import plan

log = logging.getLogger(__name__)

# "web" is the augmented-data tag ("Answer with knowledge from web search."), named as users say it.
TAGS = ("none", "seed", "web", "augmented", "both")


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  """Decoding and prompt settings. `tag`: none | seed | web (= augmented) | both (the paper's best setting
  for models trained on tagged seed + augmented data). `batch` is the sampler's largest batch (a power of
  two). `generator` names the model in the output (default: the model folder's name)."""
  tag: str = "none"
  temperature: float = 0.7
  top_p: float = 0.9
  max_new_tokens: int = 512
  batch: int = 32
  seed: int = 0
  generator: str = ""
  style: prompts.PromptStyle = prompts.DEFAULT_STYLE

  def __post_init__(self):
    if self.tag not in TAGS:
      raise io.EvalError(f"generate: expected tag in {TAGS}, found {self.tag!r}")
    if self.max_new_tokens <= 0:
      raise io.EvalError(f"generate: max_new_tokens must be positive, found {self.max_new_tokens}")

  def sample_config(self) -> SampleConfig:
    # prefix_min_tokens off: the shared prefix is computed over the whole call, so reusing it would make a
    # row depend on which other instructions share the file. The run seed is left out: rows get explicit
    # seeds, and the model keeps one sampling engine (compiled programs) per config.
    return SampleConfig(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                        max_batch=self.batch, prefix_min_tokens=1 << 30)


def tag_text(tag: str, style: prompts.PromptStyle = prompts.DEFAULT_STYLE) -> str:
  return prompts.tag_for(None, "augmented" if tag == "web" else tag, style)


def eval_prompt(instruction: str, config: GenerateConfig) -> str:
  """The exact prompt text the model continues (BOS is added as a token id)."""
  return prompts.forward_prompt(instruction, tag_text(config.tag, config.style), config.style)


def instruction_seed(instruction: str, seed: int = 0) -> int:
  """The 64-bit sampling seed of one row: a hash of its instruction and the run seed."""
  return plan.seed_from_id(instruction, seed)


def generate_outputs(lm, items: Sequence[dict], config: GenerateConfig = GenerateConfig()) -> tuple[list[dict], dict]:
  """(AlpacaEval records in input order, stats). `items` hold `instruction` (and optionally `dataset`)."""
  tok = lm.tokenizer
  if tok is None:
    raise io.EvalError(f"generate: the model at {lm.path} has no tokenizer file; generation needs one")
  generator = config.generator or (epath.Path(lm.path).name if lm.path else "model")
  texts = [eval_prompt(it["instruction"], config) for it in items]
  ids = [tok.encode(t, bos=True) for t in texts]
  longest = max((len(i) for i in ids), default=0)
  limit = lm.cfg.max_position_embeddings
  if longest >= limit:
    worst = max(range(len(ids)), key=lambda i: len(ids[i]))
    raise io.EvalError(f"generate: instruction {worst} ({items[worst]['instruction'][:60]!r}...) is {longest} "
                       f"tokens as a prompt, at or over the model's {limit} positions")
  if longest + config.max_new_tokens > limit:
    log.warning("generate: the longest prompt (%d tokens) + max_new_tokens %d exceeds the model's %d "
                "positions; answers that run that long go past the trained range", longest,
                config.max_new_tokens, limit)
  seeds = [instruction_seed(it["instruction"], config.seed) for it in items]
  start = time.time()
  gens = lm.generate(ids, config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                     seed=seeds, config=config.sample_config()) if ids else []
  seconds = time.time() - start
  outputs = []
  for it, g in zip(items, gens):
    rec = {"instruction": it["instruction"], "output": tok.decode(g).strip(), "generator": generator}
    if "dataset" in it:  # AlpacaEval's evaluation set names each item's source; keep it for its tools
      rec["dataset"] = it["dataset"]
    outputs.append(rec)
  lengths = [len(g) for g in gens]
  stats = {
    "items": len(outputs),
    "generator": generator,
    "tag": config.tag,
    "tag_text": tag_text(config.tag, config.style),
    "prompt_example": texts[0] if texts else "",
    "temperature": config.temperature,
    "top_p": config.top_p,
    "max_new_tokens": config.max_new_tokens,
    "seed": config.seed,
    # EOS is excluded from the returned tokens, so a row of exactly max_new_tokens never emitted it.
    "hit_max_new_tokens": sum(n >= config.max_new_tokens for n in lengths),
    "mean_output_tokens": sum(lengths) / len(lengths) if lengths else 0.0,
    "generated_tokens": sum(lengths),
    "seconds": round(seconds, 3),
  }
  return outputs, stats


def run(lm, input_path: epath.PathLike, output_path: epath.PathLike, config: GenerateConfig = GenerateConfig(),
        max_items: int = 0, summary_path: epath.PathLike | None = None) -> dict:
  """Reads instructions (JSONL or an AlpacaEval JSON list), writes the outputs as a JSON list atomically."""
  items = [rec for _, rec in io.read_instructions(input_path)]
  if max_items:
    items = items[:max_items]
  outputs, stats = generate_outputs(lm, items, config)
  io.write_json_list(output_path, outputs)
  summary = {"model": lm.path, "input": str(input_path), "output": str(output_path), **stats}
  io.write_summary(summary_path, summary)
  return summary

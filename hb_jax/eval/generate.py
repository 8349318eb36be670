"""Answers for a file of instructions, with the paper's decoding, in AlpacaEval's model-output format.

    summary = run(lm, "alpaca_eval.json", "answers.json", GenerateConfig(tag="both"))

Each prompt is the forward template of hb_jax/data/prompts.py (`[INST] {instruction}\\n\\n{tag} [/INST]`, or
`[INST] {instruction} [/INST]` without a tag), decoded with temperature 0.7 and top-p 0.9 by default. Row i
samples from a key derived from a hash of its instruction (and `seed`), and shared-prefix reuse is off, so an
answer depends on its instruction and the settings only: not on the file's order, its other instructions,
or the batch size (within DESIGN's logit tolerance).

It is a bulk job (hb_jax.jobs.BulkJob): the instructions are streamed in chunks of CHUNK_RECORDS, each chunk's
answers committed under `<output>.parts/` (named by its instructions and the settings), so a killed run
resumes where it stopped, and a rerun with other instructions or settings computes the chunks they change
instead of reusing stale ones. The JSON list is written atomically once every chunk is there; the parts stay
(the summary's token counts come from them, and a rerun only rewrites the list): delete them by hand once the
answers are final.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time

from etils import epath

from hb_jax import jobs
from hb_jax.config import SampleConfig, SamplingConfig
from hb_jax.data import prompts
from hb_jax.eval import io
from hb_jax.sample import plan

log = logging.getLogger(__name__)

# "web" is the augmented-data tag ("Answer with knowledge from web search."), named as users say it.
TAGS = ("none", "seed", "web", "augmented", "both")
# Instructions per committed chunk: a resume redoes at most this many; the sampler buckets lengths within it.
CHUNK_RECORDS = 256


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  """Decoding and prompt settings. `tag`: none | seed | web (= augmented) | both (the paper's best setting
  for models trained on tagged seed + augmented data). `batch` is the sampler's largest batch (a power of
  two). `generator` names the model in the output (default: the model folder's name)."""
  tag: str = "none"
  sampling: SamplingConfig = SamplingConfig()  # the paper's: temperature 0.7, top-p 0.9
  batch: int = 32
  generator: str = ""
  style: prompts.PromptStyle = prompts.DEFAULT_STYLE

  def __post_init__(self):
    if self.tag not in TAGS:
      raise io.EvalError(f"generate: expected tag in {TAGS}, found {self.tag!r}")

  def sample_config(self) -> SampleConfig:
    # prefix_min_tokens off: the shared prefix is computed over the whole call, so reusing it would make a
    # row depend on which other instructions share the file. The run seed is left out: rows get explicit
    # seeds, and the model keeps one sampling engine (compiled programs) per config.
    sp = self.sampling
    return SampleConfig(max_batch=self.batch, prefix_min_tokens=1 << 30)


def tag_text(tag: str, style: prompts.PromptStyle = prompts.DEFAULT_STYLE) -> str:
  return prompts.tag_for(None, "augmented" if tag == "web" else tag, style)


def eval_prompt(instruction: str, config: GenerateConfig) -> str:
  """The exact prompt text the model continues (BOS is added as a token id)."""
  return prompts.forward_prompt(instruction, tag_text(config.tag, config.style), config.style)


def instruction_seed(instruction: str, seed: int = 0) -> int:
  """The 64-bit sampling seed of one row: a hash of its instruction and the run seed."""
  return plan.seed_from_id(instruction, seed)


def run(lm, input_path: epath.PathLike, output_path: epath.PathLike, config: GenerateConfig = GenerateConfig(),
        max_items: int = 0, summary_path: epath.PathLike | None = None, progress: bool = True) -> dict:
  """Reads instructions (JSONL or an AlpacaEval JSON list; `instruction`, optionally `dataset`), writes the
  answers as a JSON list in input order, atomically, and returns (and writes, given a path) the summary."""
  tok = lm.tokenizer
  if tok is None:
    raise io.EvalError(f"generate: the model at {lm.path} has no tokenizer file; generation needs one")
  generator = config.generator or (epath.Path(lm.path).name if lm.path else "model")
  limit = lm.cfg.max_position_embeddings

  def items():
    # The position names an item: instructions may repeat (each gets its answer, the same one).
    for i, (where, rec) in enumerate(itertools.islice(io.read_instructions(input_path), max_items or None)):
      yield {"id": str(i), "instruction": rec["instruction"], "_where": where,
             **({"dataset": rec["dataset"]} if "dataset" in rec else {})}

  warned = []

  def encode(item: dict) -> list[int]:
    ids = tok.encode(eval_prompt(item["instruction"], config), bos=True)
    if len(ids) >= limit:
      raise io.EvalError(f"{item['_where']}: the instruction ({item['instruction'][:60]!r}...) is {len(ids)} tokens "
                         f"as a prompt, at or over the model's {limit} positions")
    if len(ids) + config.sampling.max_new_tokens > limit and not warned:
      warned.append(item["_where"])
      log.warning("generate: %s: the prompt (%d tokens) + max_new_tokens %d exceeds the model's %d positions; "
                  "answers that run that long go past the trained range", item["_where"], len(ids),
                  config.sampling.max_new_tokens, limit)
    return ids

  def answer(chunk: list[dict], prompt_ids: list[list[int]]) -> list[dict]:
    sp = config.sampling
    gens = lm.generate(prompt_ids, sp.max_new_tokens, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k,
                       seed=[instruction_seed(it["instruction"], sp.seed) for it in chunk],
                       config=config.sample_config())
    return [{"id": it["id"], "instruction": it["instruction"], "output": tok.decode(g).strip(),
             "generator": generator, **({"dataset": it["dataset"]} if "dataset" in it else {}), "tokens": len(g)}
            for it, g in zip(chunk, gens)]

  answered: list[dict] = []

  def write(path: epath.Path, outputs) -> None:
    answered.extend(outputs)
    # AlpacaEval's record: instruction, output, generator (+ dataset, which its evaluation set names).
    io.write_json_list(path, [{k: v for k, v in o.items() if k not in ("id", "tokens")} for o in answered])

  # Everything an answer depends on besides its instruction; the model's weights are left out (hashing them
  # would read the whole model): give each model its own output path.
  settings = json.dumps({"config": dataclasses.asdict(config), "generator": generator,
                         "model": lm.cfg.fields_dict()}, sort_keys=True, default=str)
  output_path = epath.Path(output_path)
  start = time.time()
  job = jobs.BulkJob(items, output_path, parts=f"{output_path}.parts", name="answers", chunk_records=CHUNK_RECORDS,
                     settings=settings, write=write)
  job.run(answer, encode=encode, desc="generate", progress=progress)
  lengths = [o["tokens"] for o in answered]
  summary = {
    "model": lm.path,
    "input": str(input_path),
    "output": str(output_path),
    "items": len(answered),
    "generator": generator,
    "tag": config.tag,
    "tag_text": tag_text(config.tag, config.style),
    "prompt_example": eval_prompt(answered[0]["instruction"], config) if answered else "",
    "temperature": config.sampling.temperature,
    "top_p": config.sampling.top_p,
    "max_new_tokens": config.sampling.max_new_tokens,
    "seed": config.sampling.seed,
    # EOS is excluded from the returned tokens, so a row of exactly max_new_tokens never emitted it.
    "hit_max_new_tokens": sum(n >= config.sampling.max_new_tokens for n in lengths),
    "mean_output_tokens": sum(lengths) / len(lengths) if lengths else 0.0,
    "generated_tokens": sum(lengths),
    "seconds": round(time.time() - start, 3),
  }
  io.write_summary(summary_path, summary)
  return summary

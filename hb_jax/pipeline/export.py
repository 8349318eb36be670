"""The curated data as a product: exports and a dataset card.

  report/export/curated.hf.jsonl   one JSON object per line (loads with `datasets.load_dataset("json", ...)`):
                                   instruction, output, source, score, method, iteration, segment_id,
                                   segment_source, generated_by, rated_by
  report/export/curated.alpaca.json  a JSON list of {"instruction", "input": "", "output"} (Alpaca's format)

The exported set is what trained the last model: seed + A_k of the last iteration.
"""
from __future__ import annotations

import json

from hb_jax.data import records

HF_FIELDS = ("id", "instruction", "output", "source", "score", "method", "iteration", "segment_id",
             "segment_source", "generated_by", "rated_by")


def final_train_set(ctx) -> list[dict]:
  T = ctx.cfg.curate.iterations if ctx.cfg.ablation.curation else 1
  p = ctx.path(f"curate/iter{T}/train.jsonl")
  if not p.exists():  # the report runs after the training stages; an empty export would hide their loss
    raise FileNotFoundError(f"{p}: expected the last iteration's training set, found nothing")
  return list(records.read_jsonl(p))


def export_curated(ctx) -> dict[str, int]:
  rows = final_train_set(ctx)
  hf = [{k: r.get(k) for k in HF_FIELDS} for r in rows]
  records.write_jsonl(ctx.path("report/export/curated.hf.jsonl"), hf)
  alpaca = [{"instruction": r["instruction"], "input": "", "output": r["output"]} for r in rows]
  records.write_bytes_atomic(ctx.path("report/export/curated.alpaca.json"),
                             (json.dumps(alpaca, ensure_ascii=False, indent=1) + "\n").encode())
  return {"hf": len(hf), "alpaca": len(alpaca)}


def dataset_card(ctx, summary) -> str:
  cfg = ctx.cfg
  rows = final_train_set(ctx)
  n_aug = sum(r.get("source") == "augmented" for r in rows)
  synthetic = cfg.inputs.kind == "synthetic"
  sources = ("the generated demo world (hb_jax/data/synthetic.py, seed "
             f"{cfg.inputs.world_seed}): invented facts and templated tasks, no real-world text"
             if synthetic else f"seed `{cfg.inputs.seed_jsonl}`, segments `{cfg.inputs.segments_jsonl}`")
  lic = ("Generated data; no third-party licence applies." if synthetic else
         "Inherits the licences of its inputs: the seed (e.g. oasst1, Apache-2.0) and the web segments "
         "(e.g. ClueWeb terms of use); the generating model's licence (e.g. LLaMA's) may restrict use of its "
         "outputs. Check all three before release.")
  return "\n".join([
    "## Dataset card: curated instruction data", "",
    f"- **Contents**: {len(rows)} (instruction, output) pairs: {len(rows) - n_aug} seed + {n_aug} self-curated "
    f"augmented pairs (iteration {cfg.curate.iterations if cfg.ablation.curation else 1}, method "
    f"`{cfg.curate.method}`, k = {cfg.curate.k}).",
    f"- **Sources**: {sources}.",
    f"- **Pipeline and filters**: {summary['segments']} segments -> {summary['candidates']} candidates "
    f"(instructions backtranslated by `models/backward`; {summary['segments_without_candidate']} segments got "
    "no instruction) -> rated by the previous model -> kept if rating >= k.",
    "- **Provenance per record**: `segment_id`, `segment_source`, `generated_by` (the model folder that wrote "
    "the instruction), `rated_by`, `method`, `iteration`, `score`.",
    "- **Files**: `report/export/curated.hf.jsonl` (Hugging Face datasets JSON lines), "
    "`report/export/curated.alpaca.json` (Alpaca format).",
    f"- **Licence notes**: {lic}",
    "- **Known limitations**: ratings come from a model finetuned on a small seed; precision against ground "
    "truth is reported above where truth exists and is unknown otherwise.",
  ])

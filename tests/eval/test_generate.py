"""Generation for evaluation: AlpacaEval output format, tags in the prompt, per-instruction seeds, resume."""
from __future__ import annotations

import json

import pytest

from hb_jax.config import SamplingConfig
from hb_jax.data import prompts, records
from hb_jax.eval import generate, io

INSTRUCTIONS = ["what capital city", "name a river", "four plus five", "which is long"]
# Small and fixed: every call below runs on the same sampler programs (batch 4, or batch 1 for one row).
CFG = generate.GenerateConfig(tag="seed", batch=4, sampling=SamplingConfig(max_new_tokens=6))


def test_prompt_carries_the_configured_tag():
  ins = "Name a river."
  assert generate.eval_prompt(ins, generate.GenerateConfig(tag="none")) == "[INST] Name a river. [/INST]"
  assert generate.eval_prompt(ins, generate.GenerateConfig(tag="seed")) == (
    f"[INST] Name a river.\n\n{prompts.TAG_SEED} [/INST]")
  web = generate.eval_prompt(ins, generate.GenerateConfig(tag="web"))
  assert web == f"[INST] Name a river.\n\n{prompts.TAG_AUGMENTED} [/INST]"
  assert web == generate.eval_prompt(ins, generate.GenerateConfig(tag="augmented"))
  both = generate.eval_prompt(ins, generate.GenerateConfig(tag="both"))
  assert prompts.TAG_SEED in both and prompts.TAG_AUGMENTED in both
  with pytest.raises(io.EvalError, match="expected tag in"):
    generate.GenerateConfig(tag="web search")


def _answers(lm, tmp_path, instructions, config=CFG, name="ins"):
  """(AlpacaEval records, summary) of generate.run on a JSONL of `instructions`."""
  path = tmp_path / f"{name}.jsonl"
  records.write_jsonl(path, [{"instruction": i} for i in instructions])
  summary = generate.run(lm, path, tmp_path / f"{name}.json", config, progress=False)
  return json.loads((tmp_path / f"{name}.json").read_text()), summary


def test_outputs_are_the_tagged_prompts_sampled_with_instruction_seeds(lm, tmp_path):
  """The evaluator's answers equal `lm.generate` on the tagged prompt text with the instruction-hash seeds."""
  outputs, stats = _answers(lm, tmp_path, INSTRUCTIONS)
  texts = [f"[INST] {i}\n\n{prompts.TAG_SEED} [/INST]" for i in INSTRUCTIONS]
  seeds = [generate.instruction_seed(i) for i in INSTRUCTIONS]
  want = lm.generate(texts, CFG.sampling.max_new_tokens, temperature=0.7, top_p=0.9, seed=seeds, config=CFG.sample_config())
  assert [o["output"] for o in outputs] == [w.strip() for w in want]
  assert stats["prompt_example"] == texts[0] and stats["tag_text"] == prompts.TAG_SEED
  assert stats["items"] == 4 and 0 < stats["generated_tokens"] <= 4 * CFG.sampling.max_new_tokens
  # A random model's answers differ between instructions; identical ones would hint at a shared key.
  assert len({o["output"] for o in outputs}) > 1


def test_answers_do_not_depend_on_batch_mates_or_batch_size(lm, tmp_path):
  first, _ = _answers(lm, tmp_path, INSTRUCTIONS, name="first")
  by_ins = {o["instruction"]: o["output"] for o in first}
  # Reversed (every row in another slot, beside other rows) and alone (a batch of one).
  rev, _ = _answers(lm, tmp_path, INSTRUCTIONS[::-1], name="rev")
  alone, _ = _answers(lm, tmp_path, INSTRUCTIONS[2:3], name="alone")
  assert {o["instruction"]: o["output"] for o in rev} == by_ins
  assert alone[0]["output"] == by_ins[INSTRUCTIONS[2]]
  # The run seed changes the samples.
  other, _ = _answers(lm, tmp_path, INSTRUCTIONS, generate.GenerateConfig(
      tag="seed", batch=4, sampling=SamplingConfig(max_new_tokens=6, seed=1)), name="other")
  assert [o["output"] for o in other] != [o["output"] for o in first]


def test_a_rerun_resumes_from_the_committed_chunks(lm, tmp_path, monkeypatch):
  """Answers are committed in chunks under <output>.parts/: a chunk lost to a kill is redone alone, and the
  list comes out byte-identical with the same summary; other settings are another job's chunks."""
  monkeypatch.setattr(generate, "CHUNK_RECORDS", 3)
  src, out = tmp_path / "ins.jsonl", tmp_path / "out.json"
  records.write_jsonl(src, [{"instruction": i} for i in INSTRUCTIONS + ["a fifth one", "name a river"]])
  first = generate.run(lm, src, out, CFG, progress=False)
  want = out.read_bytes()
  parts = sorted((tmp_path / "out.json.parts").iterdir())
  assert [p.name[:len("answers-p000of001-c000000")] for p in parts] == ["answers-p000of001-c000000",
                                                                        "answers-p000of001-c000001"]
  kept = parts[0].stat().st_mtime_ns
  parts[1].unlink()
  out.unlink()
  again = generate.run(lm, src, out, CFG, progress=False)
  assert out.read_bytes() == want and parts[1].exists() and parts[0].stat().st_mtime_ns == kept
  assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in first.items() if k != "seconds"}
  answers = json.loads(want)
  assert answers[5]["output"] == answers[1]["output"]  # a repeated instruction: the same answer
  cfg = generate.GenerateConfig(tag="none", batch=4, sampling=SamplingConfig(max_new_tokens=6))
  generate.run(lm, src, out, cfg, progress=False)
  assert len(list((tmp_path / "out.json.parts").iterdir())) == 4 and out.read_bytes() != want


def test_file_formats_in_and_out(lm, tmp_path):
  jsonl = tmp_path / "ins.jsonl"
  records.write_jsonl(jsonl, [{"id": str(k), "instruction": i} for k, i in enumerate(INSTRUCTIONS)])
  alpaca = tmp_path / "eval.json"  # AlpacaEval's evaluation set: its reference `output` must not leak through
  alpaca.write_text(json.dumps([{"instruction": i, "output": "REFERENCE", "generator": "text_davinci_003",
                                 "dataset": "helpful_base"} for i in INSTRUCTIONS]))
  s1 = generate.run(lm, jsonl, tmp_path / "out1.json", CFG, summary_path=tmp_path / "s1.json", progress=False)
  s2 = generate.run(lm, alpaca, tmp_path / "out2.json", CFG, progress=False)
  out1 = json.loads((tmp_path / "out1.json").read_text())
  out2 = json.loads((tmp_path / "out2.json").read_text())
  assert isinstance(out1, list) and len(out1) == len(INSTRUCTIONS)
  assert all(set(o) == {"instruction", "output", "generator"} for o in out1)
  assert all(set(o) == {"instruction", "output", "generator", "dataset"} for o in out2)
  assert [o["instruction"] for o in out1] == INSTRUCTIONS
  assert {o["generator"] for o in out1} == {"model"}  # the model folder's name
  assert [o["output"] for o in out1] == [o["output"] for o in out2] and "REFERENCE" not in {o["output"] for o in out2}
  assert json.loads((tmp_path / "s1.json").read_text()) == s1 and s2["items"] == len(INSTRUCTIONS)
  # The outputs read back as a judge input; max_items keeps the first ones.
  assert [r["instruction"] for _, r in io.read_outputs(tmp_path / "out1.json")] == INSTRUCTIONS
  generate.run(lm, jsonl, tmp_path / "out3.json", CFG, max_items=3)
  assert json.loads((tmp_path / "out3.json").read_text()) == out1[:3]


def test_malformed_instructions_name_the_record(lm, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"instruction": "fine"}\n\n{"prompt": "no instruction"}\n')
  with pytest.raises(io.EvalError, match=f"{bad}:3: expected field 'instruction'"):
    generate.run(lm, bad, tmp_path / "out.json")
  bad_list = tmp_path / "bad.json"
  bad_list.write_text('[{"instruction": "fine"}, {"instruction": ""}]')
  with pytest.raises(io.EvalError, match=r"bad.json\[1\]: expected field 'instruction' to be non-empty"):
    generate.run(lm, bad_list, tmp_path / "out.json")
  assert not (tmp_path / "out.json").exists()

"""The evaluation command lines (hb-eval-generate, hb-judge, hb-eval-mc) on the shared model folder."""
from __future__ import annotations

import json

from hb_jax import cli


def test_eval_mc_command_prints_and_writes_the_summary(model_dir, tmp_path, capsys):
  questions = tmp_path / "mc.jsonl"
  questions.write_text("".join(json.dumps({"question": q, "choices": c, "answer": 0, "subject": "s"}) + "\n"
                               for q, c in [("four plus five", ["nine", "six"]), ("name a river", ["rome", "the long river"])]))
  out = tmp_path / "summary.json"
  rc = cli.eval_mc_main(["--model", str(model_dir), "--input", str(questions), "--output", str(out),
                         "--details", str(tmp_path / "d.jsonl"), "--batch", "4"])
  assert rc == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed == json.loads(out.read_text())
  assert printed["n"] == 2 and printed["shots"] == 0 and set(printed["subjects"]) == {"s"}
  assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 2


def test_commands_report_malformed_inputs_with_file_and_line(model_dir, tmp_path, capsys):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"instruction": "x", "output": "y", "question": "q", "choices": ["a", "b"], "answer": 0}\n'
                 '{"output": "y", "choices": ["a", "b"], "answer": 0}\n')
  good = tmp_path / "good.json"
  good.write_text(json.dumps([{"instruction": "x", "output": "z"}]))
  runs = {
    "generate": cli.eval_generate_main(["--model", str(model_dir), "--input", str(bad),
                                        "--output", str(tmp_path / "o.json"), "--tag", "both"]),
    "judge": cli.judge_main(["--model", str(model_dir), "--outputs_a", str(good), "--outputs_b", str(bad),
                             "--output", str(tmp_path / "j.json")]),
    "mc": cli.eval_mc_main(["--model", str(model_dir), "--input", str(bad), "--output", str(tmp_path / "m.json")]),
  }
  err = capsys.readouterr().err
  assert runs == {"generate": 1, "judge": 1, "mc": 1}
  assert err.count(f"error: {bad}:2: expected") == 3, err
  assert not any((tmp_path / n).exists() for n in ("o.json", "j.json", "m.json", "j.verdicts.jsonl"))

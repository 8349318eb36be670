"""finetune(): base model folder + JSONL -> trained model folder that api.load opens; metrics written."""
import json

import jax
import numpy as np
import pytest

from hb_jax import api, model_folder
from hb_jax.config import MeshConfig, TrainConfig
from hb_jax.data import prompts
from hb_jax.train import finetune as ft

from .common import TINY, tiny_model


class CharTokenizer:
  """A real (if crude) tokenizer: one id per character, BOS=1, EOS=2."""
  bos_id, eos_id = 1, 2

  def encode(self, text, bos=False, eos=False):
    return [1] * bos + [3 + ord(c) % 120 for c in text] + [2] * eos


def test_pair_tokenizer_uses_the_prompt_templates():
  tok = CharTokenizer()
  fwd = ft.pair_tokenizer(tok, "forward", "source")
  p, r = fwd({"instruction": "hi", "output": "yo", "source": "augmented"})
  assert p == tok.encode(prompts.forward_prompt("hi", prompts.TAG_AUGMENTED), bos=True)
  assert r == tok.encode(prompts.forward_target("yo"), eos=True) and r[-1] == 2
  p, r = ft.pair_tokenizer(tok, "backward")({"instruction": "hi", "output": "yo"})
  assert p == tok.encode(prompts.backward_prompt("yo"), bos=True)
  assert r == tok.encode(prompts.backward_target("hi"), eos=True)


@pytest.mark.slow
def test_finetune_end_to_end(tmp_path):
  base = tmp_path / "base"
  model_folder.save_model_folder(base, TINY, jax.device_get(tiny_model(0)[1]))
  rng = np.random.default_rng(5)
  records = [{"id": str(i), "prompt_tokens": [1] + rng.integers(3, 128, 5).tolist(),
              "response_tokens": rng.integers(3, 128, 6).tolist() + [2]} for i in range(12)]
  records.append({"id": "long", "prompt_tokens": [1, 5, 6], "response_tokens": list(range(3, 60))})
  train_jsonl = tmp_path / "train.jsonl"
  train_jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
  cfg = TrainConfig(num_steps=6, batch_size=4, seq_len=24, learning_rate=1e-3, end_learning_rate=9e-4,
                    val_examples=3, checkpoint_every=3, log_every=2, tensorboard=True, progress_bar=False,
                    peak_flops_per_device=1e9, mesh=MeshConfig(fsdp=4, tensor=2))
  res = ft.finetune(cfg, base, train_jsonl, tmp_path / "m0", tmp_path / "work")
  assert res.completed and res.step == 6 and res.batch_size == 4
  assert res.data_stats == {"total": 13, "kept": 13, "truncated": 1, "dropped_too_long": 0,
                            "dropped_empty": 0, "train": 10, "validation": 3}
  assert res.val_loss is not None and np.isfinite(res.val_loss)

  lm = api.load(tmp_path / "m0")
  assert lm.cfg == TINY  # the base config (dropout is a training setting, not saved)
  before = api.load(base).logits([[1, 5, 6, 7]])
  after = lm.logits([[1, 5, 6, 7]])
  assert after.shape == (1, 4, TINY.vocab_size) and not np.allclose(before, after)
  extra = json.loads((tmp_path / "m0" / "model.json").read_text())["extra"]
  assert extra["steps"] == 6

  rows = [json.loads(l) for l in open(tmp_path / "work" / "metrics.jsonl")]
  logged = [r for r in rows if "loss" in r and "event" not in r]
  assert [r["step"] for r in logged] == [2, 4, 6]
  for key in ("loss", "grad_norm", "lr", "tokens_per_s", "mfu"):
    assert all(np.isfinite(r[key]) for r in logged), key
  assert logged[-1]["lr"] == pytest.approx(9e-4, rel=1e-5)
  assert any("val_loss" in r for r in rows)
  assert list((tmp_path / "work" / "tensorboard").glob("events.out.tfevents.*"))

  # A finished model folder is not overwritten by accident; a rerun of a finished run is a no-op train.
  with pytest.raises(model_folder.CheckpointError, match="already a finished model folder"):
    ft.finetune(cfg, base, train_jsonl, tmp_path / "m0", tmp_path / "work")

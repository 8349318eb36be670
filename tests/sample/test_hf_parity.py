"""Greedy generation and loglikelihood through the public API equal `transformers` on converted weights."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from helpers import convert_hf, make_hf_llama  # noqa: E402

from hb_jax import api  # noqa: E402
from hb_jax.sample.sampling import Sampling  # noqa: E402

from .common import assert_greedy_equal, random_prompts  # noqa: E402

MAX_NEW = 8


def _hf_greedy(hf, prompt, eos_id):
  """HF's greedy continuation (EOS excluded) and its per-step relative top-2 margins."""
  with torch.no_grad():
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=eos_id,
                      pad_token_id=0, output_logits=True, return_dict_in_generate=True)
  new = out.sequences[0, len(prompt):].tolist()
  if eos_id in new:
    new = new[:new.index(eos_id)]
  margins = []
  for step in out.logits:
    last = np.sort(step[0].double().numpy())
    margins.append((last[-1] - last[-2]) / np.max(np.abs(last)))
  return new, margins


def test_greedy_and_loglikelihood_match_transformers(tmp_path):
  hf, hf_dir = make_hf_llama(tmp_path, num_key_value_heads=2)
  lm = api.load(convert_hf(hf_dir, tmp_path / "model"))
  prompts = random_prompts([3, 11, 6, 14, 1], seed=12, vocab=97)
  # Pick an EOS id that greedy decoding actually reaches, so stopping is compared too.
  eos = _hf_greedy(hf, prompts[1], eos_id=None)[0][4]
  ours = lm.generate(prompts, MAX_NEW, return_logprobs=True)  # the model's own EOS (2)
  got = lm.sampler().generate(prompts, max_new_tokens=MAX_NEW, eos_ids=(eos,), sampling=Sampling())
  for i, p in enumerate(prompts):
    ref, margins = _hf_greedy(hf, p, eos)
    assert_greedy_equal(got[i].tokens, ref, margins, f"prompt {i}")
    ref_default, margins_d = _hf_greedy(hf, p, lm.cfg.eos_id)
    assert_greedy_equal(ours[i][0], ref_default, margins_d, f"prompt {i} (model eos)")
  # Teacher-forced scores of HF's own continuations.
  conts = [_hf_greedy(hf, p, None)[0] for p in prompts]
  with torch.no_grad():
    want = []
    for p, c in zip(prompts, conts):
      logp = torch.log_softmax(hf(torch.tensor([p + c])).logits[0].double(), -1).numpy()
      want.append(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(c)))
  np.testing.assert_allclose(lm.loglikelihood(prompts, conts), want, rtol=1e-4)
  # Log-probs returned by generate agree with teacher forcing of the same tokens.
  np.testing.assert_allclose([lp.sum() for _, lp in ours], lm.loglikelihood(prompts, [t for t, _ in ours]),
                             rtol=1e-4)

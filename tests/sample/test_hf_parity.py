"""Greedy generation and loglikelihood through the public API equal `transformers` on converted weights."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from helpers import convert_hf, make_hf_llama  # noqa: E402

from hb_jax import api  # noqa: E402
from hb_jax.config import SampleConfig  # noqa: E402
from hb_jax.sample.sampling import Sampling  # noqa: E402

from .common import assert_greedy_equal, random_prompts  # noqa: E402

MAX_NEW = 8


def _hf_greedy(hf, prompt, eos_id):
  """HF's greedy continuation (EOS excluded) and its per-step relative top-2 margins. eos_id: an id, a list
  of ids (any ends the row) or None (the model's generation_config)."""
  with torch.no_grad():
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=eos_id,
                      pad_token_id=0, output_logits=True, return_dict_in_generate=True)
  new = out.sequences[0, len(prompt):].tolist()
  ends = eos_id if isinstance(eos_id, list) else [eos_id]
  new = new[:next((j for j, t in enumerate(new) if t in ends), len(new))]
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
  # The paged cache (pages of 4 slots, read page by page up to each row's length) too.
  paged = lm.sampler(SampleConfig(page_size=4)).generate(prompts, max_new_tokens=MAX_NEW, eos_ids=(eos,),
                                                         sampling=Sampling())
  for i, p in enumerate(prompts):
    ref, margins = _hf_greedy(hf, p, eos)
    assert_greedy_equal(got[i].tokens, ref, margins, f"prompt {i}")
    assert_greedy_equal(paged[i].tokens, ref, margins, f"prompt {i} (paged)")
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


def test_greedy_stops_at_every_id_of_a_list_eos_token_id_like_transformers(tmp_path):
  """A config.json listing several end ids (LLaMA-3.1-Instruct's [128001, 128008, 128009]): greedy generation
  stops at any of them, the stopping id excluded, exactly as transformers' generate does."""
  hf, hf_dir = make_hf_llama(tmp_path, num_key_value_heads=2)
  prompts = random_prompts([3, 11, 6, 14, 1], seed=12, vocab=97)
  free = [_hf_greedy(hf, p, eos_id=None)[0] for p in prompts]
  # The list's second id is a token greedy decoding of prompt 1 reaches at step k >= 2 (and not before);
  # its third is one no prompt ever emits.
  k = next(j for j in range(2, len(free[1])) if free[1][j] not in free[1][:j] + [2])
  never = next(t for t in range(3, 97) if all(t not in f for f in free))
  eos = [2, free[1][k], never]
  cfg_path = hf_dir / "config.json"
  cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "eos_token_id": eos}))
  lm = api.load(convert_hf(hf_dir, tmp_path / "model"))
  assert lm.cfg.eos_ids == tuple(eos)
  ours = lm.generate(prompts, MAX_NEW)  # the model's own end ids
  completions = lm.sampler().generate(prompts, max_new_tokens=MAX_NEW, sampling=Sampling())
  for i, p in enumerate(prompts):
    ref, margins = _hf_greedy(hf, p, eos)
    assert_greedy_equal(ours[i], ref, margins, f"prompt {i}")
    assert completions[i].tokens.tolist() == ours[i]
  assert ours[1] == free[1][:k] and completions[1].finish_reason == "eos"
  assert completions[1].num_decoded == k + 1  # the end id was decoded, as EOS is

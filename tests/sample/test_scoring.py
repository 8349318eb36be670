"""Scoring primitives against the plain forward pass: loglikelihood and candidate next-token odds."""
from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from hb_jax.api import LanguageModel
from hb_jax.parallel import single_device_mesh
from hb_jax.sample.scoring import expected_value

from .common import TEST_SAMPLE, TINY, random_prompts, tiny_model


@pytest.fixture(scope="module")
def lm():
  model = tiny_model(2)
  return LanguageModel(TINY, nnx.to_pure_dict(nnx.state(model, nnx.Param)), single_device_mesh())


def _log_softmax(x):
  x = x.astype(np.float64)
  return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)


def test_loglikelihood_is_sum_of_log_softmax_of_logits(lm):
  # Four pairs of total length 12, so one `logits` call checks them all; then odd lengths in buckets.
  ctx_lens, cont_lens = (1, 4, 9, 11), (11, 8, 3, 1)
  seqs = random_prompts([12] * 4, seed=3)
  ctxs = [s[:c] for s, c in zip(seqs, ctx_lens)]
  conts = [s[c:] for s, c in zip(seqs, ctx_lens)]
  logp = _log_softmax(lm.logits(np.asarray(seqs)))
  want = [sum(logp[i, t - 1, seqs[i][t]] for t in range(c, 12)) for i, c in enumerate(ctx_lens)]
  got = lm.scorer(TEST_SAMPLE).loglikelihood(ctxs, conts)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The public method (default config: other buckets and batch) agrees too; empty continuations score 0.
  np.testing.assert_allclose(lm.loglikelihood(ctxs + [[5]], conts + [[]]), want + [0.0], rtol=1e-5,
                             atol=1e-6)


def test_candidate_distribution_matches_logits(lm):
  ctxs = random_prompts([12, 5, 12, 30], seed=4)
  cands = [7, 8, 9, 10, 11]
  scorer = lm.scorer(TEST_SAMPLE)
  logp = scorer.candidate_logprobs(ctxs, cands)
  probs = scorer.candidate_distribution(ctxs, cands)
  # One `logits` call: right-padding cannot change a causal model's logits at a context's last token.
  padded = np.full((len(ctxs), 30), 3, np.int32)
  for i, c in enumerate(ctxs):
    padded[i, :len(c)] = c
  all_logits = lm.logits(padded)
  for i, c in enumerate(ctxs):
    full = _log_softmax(all_logits[i, len(c) - 1])
    np.testing.assert_allclose(logp[i], full[cands], rtol=1e-5)
    q = np.exp(full[cands]) / np.exp(full[cands]).sum()
    np.testing.assert_allclose(probs[i], q, rtol=1e-5)
  ev = expected_value(probs, [1, 2, 3, 4, 5])
  assert np.all((ev >= 1) & (ev <= 5))


def test_scoring_rejects_bad_input(lm):
  with pytest.raises(ValueError, match="context 0 is empty"):
    lm.loglikelihood([[]], [[3]])
  with pytest.raises(ValueError, match=r"token ids must be in \[0, 128\)"):
    lm.loglikelihood([[1]], [[500]])
  # A repeated candidate would count its probability twice in the renormalised distribution.
  with pytest.raises(ValueError, match="expected distinct candidate ids, found 3 repeated"):
    lm.scorer().candidate_distribution([[1, 2]], [3, 3, 4])
  # Past the model's trained context (TINY: 512 positions), for scoring and for generation alike.
  with pytest.raises(ValueError, match=r"sequence 1: context \+ continuation is 513 tokens, past the model's "
                                       r"max_position_embeddings \(512\)"):
    lm.loglikelihood([[1], [1] * 500], [[2], [2] * 13])
  with pytest.raises(ValueError, match=r"sequence 0: context is 600 tokens"):
    lm.scorer().candidate_logprobs([[1] * 600], [3, 4])
  with pytest.raises(ValueError, match=r"prompt 0: 500 tokens \+ max_new_tokens 14 pass"):
    lm.generate([[1] * 500], 14)
  assert len(lm.generate([[1] * 500], 13)[0]) <= 13  # the 13th new token is sampled, never fed back
  with pytest.raises(ValueError, match=r"stop=\[\[5\]\] for token 5\), found 5"):
    lm.generate([[1, 2]], 3, stop=[5])
  with pytest.raises(ValueError, match="all strings or all token-id lists"):
    lm.generate([[1, 2], "text"], 3)


def test_shared_prefix_reuse_changes_no_score(lm):
  # Contexts sharing a 20-token prefix (like the curation rubric): the prefix is run once and its KV reused;
  # the scores equal scoring every sequence whole.
  prefix = random_prompts([20], seed=8)[0]
  tails = random_prompts([3, 9, 1, 14, 6], seed=9)
  ctxs = [prefix + t for t in tails]
  conts = random_prompts([4, 1, 7, 2, 5], seed=10)
  scorer = lm.scorer(TEST_SAMPLE)
  before = scorer.stats["prefix_tokens"]
  np.testing.assert_allclose(scorer.loglikelihood(ctxs, conts), scorer.loglikelihood(ctxs, conts, prefix=None),
                             rtol=1e-5)
  np.testing.assert_allclose(scorer.candidate_logprobs(ctxs, [3, 4, 5]),
                             scorer.candidate_logprobs(ctxs, [3, 4, 5], prefix=0), rtol=1e-5)
  assert scorer.stats["prefix_tokens"] - before == 2 * 20
  with pytest.raises(ValueError, match="prefix=21"):
    scorer.loglikelihood(ctxs, conts, prefix=21)

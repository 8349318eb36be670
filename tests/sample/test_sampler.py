"""The KV-cache sampler: exactness against full recomputation, stopping rules, and invariance to batch
composition, shared-prefix reuse and continuous-batching refills; each with a contiguous cache per row and
with a paged cache (pages of 4 slots: rows of 16 to 24 slots grow over several pages, refills reuse them)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hb_jax.sample.sampler import Sampler
from hb_jax.sample.sampling import Sampling

from .common import TEST_SAMPLE, TINY, assert_greedy_equal, greedy_reference, random_prompts, tiny_model

LENGTHS = (5, 9, 3, 12, 7, 14)
MAX_NEW = 8


@pytest.fixture(scope="module")
def model():
  return tiny_model(0)


@pytest.fixture(scope="module")
def sampler(model):
  return Sampler(model, config=TEST_SAMPLE)


@pytest.fixture(scope="module")
def paged(model):
  return Sampler(model, config=dataclasses.replace(TEST_SAMPLE, page_size=4))


@pytest.fixture(params=["contiguous", "paged"])
def any_sampler(request, sampler, paged):
  """Both cache layouts, for the tests of what they must share: exactness, release, invariances."""
  return sampler if request.param == "contiguous" else paged


@pytest.fixture(scope="module")
def prompts():
  return random_prompts(LENGTHS, seed=1)


@pytest.fixture(scope="module")
def reference(model, prompts):
  return [greedy_reference(model, p, MAX_NEW) for p in prompts]


def test_greedy_with_cache_equals_full_recomputation(any_sampler, prompts, reference):
  out = any_sampler.generate(prompts, max_new_tokens=MAX_NEW, sampling=Sampling(), eos_ids=())
  for i, (c, (ref, margins)) in enumerate(zip(out, reference)):
    assert_greedy_equal(c.tokens, ref, margins, f"prompt {i}")
    assert c.finish_reason == "length" and len(c.logprobs) == len(c.tokens)
    assert np.all(c.logprobs <= 0)


def test_eos_stops_and_is_excluded(sampler, prompts, reference):
  ref = reference[0][0]
  eos = ref[3]
  cut = ref.index(eos)  # the first occurrence ends the row
  out = sampler.generate(prompts, max_new_tokens=MAX_NEW, sampling=Sampling(), eos_ids=(eos,))[0]
  assert out.tokens.tolist() == ref[:cut] and out.finish_reason == "eos"
  assert sampler.generate(prompts[:1], max_new_tokens=0)[0].tokens.size == 0


def test_stop_sequence_is_excluded(sampler, prompts, reference):
  ref = reference[1][0]
  seq = tuple(ref[2:4])
  out = sampler.generate(prompts, max_new_tokens=MAX_NEW, sampling=Sampling(), eos_ids=(),
                         stop_sequences=[seq])[1]
  first = next(i for i in range(len(ref) - 1) if tuple(ref[i:i + 2]) == seq)
  assert out.tokens.tolist() == ref[:first] and out.finish_reason == "stop"
  # Outputs shorter than the stop rule's padded width (8 tokens) still stop; a sequence longer than the
  # output never matches.
  short = sampler.generate(prompts, max_new_tokens=4, sampling=Sampling(), eos_ids=(),
                           stop_sequences=[seq, (ref[0],) * 9])[1]
  assert (short.tokens.tolist(), short.finish_reason) == ((ref[:first], "stop") if first + 2 <= 4 else
                                                          (ref[:4], "length"))
  one = sampler.generate(prompts, max_new_tokens=1, sampling=Sampling(), eos_ids=(), stop_sequences=[ref[:1]])
  assert (one[1].tokens.tolist(), one[1].finish_reason) == ([], "stop")
  # When two sequences end the output at once ([b] and [a, b]), the longer one is removed, in either order.
  at = ref.index(seq[1])
  want = ref[:at - 1] if at and tuple(ref[at - 1:at + 1]) == seq else ref[:at]
  for order in ([seq[1:], seq], [seq, seq[1:]]):
    both = sampler.generate(prompts, max_new_tokens=MAX_NEW, sampling=Sampling(), eos_ids=(), stop_sequences=order)[1]
    assert both.tokens.tolist() == want


def test_stop_strings_release_the_row(any_sampler, prompts, reference):
  any_sampler.detokenize = lambda ids: " ".join(f"t{i}" for i in ids)
  ref = reference[2][0]
  out = any_sampler.generate(prompts, max_new_tokens=MAX_NEW, sampling=Sampling(), eos_ids=(),
                         stop_strings=[f"t{ref[1]} t{ref[2]}"])[2]
  assert out.tokens.tolist() == ref[:3] and out.finish_reason == "stop"


def _sampled(sampler, prompts, seeds, **kw):
  return sampler.generate(prompts, max_new_tokens=MAX_NEW, sampling=Sampling(1.0, 0, 0.9), seeds=seeds,
                          eos_ids=(), **kw)


def _assert_same(a, b):
  assert a.tokens.tolist() == b.tokens.tolist()
  np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-5)


def test_batch_composition_invariance(any_sampler, prompts):
  # One 16-token bucket: five prompts on four rows (so one is refilled), in two orders, and beside others.
  group = [prompts[1], prompts[3], prompts[5]] + random_prompts([10, 15], seed=11)
  seeds = np.stack([np.full(5, 5, np.uint32), np.arange(5, dtype=np.uint32)], 1)
  together = _sampled(any_sampler, group, seeds)
  order = [4, 2, 0, 3, 1]
  shuffled = _sampled(any_sampler, [group[i] for i in order], seeds[order])
  for j, i in enumerate(order):
    _assert_same(shuffled[j], together[i])
  mixed = _sampled(any_sampler, [random_prompts([13], seed=12)[0], group[1], group[4]], seeds[[0, 1, 4]])
  _assert_same(mixed[1], together[1])
  _assert_same(mixed[2], together[4])


def test_prefix_reuse_and_refills_change_nothing(model, any_sampler):
  prefix = random_prompts([20], seed=7)[0]
  tails = random_prompts([2, 6, 1, 8, 4, 3, 7], seed=8)
  prompts = [prefix + t for t in tails]
  refs = [greedy_reference(model, p, MAX_NEW) for p in prompts]
  # Stop sequences end rows after different numbers of tokens, so 7 rows on 4 slots get refilled.
  stops = [tuple(r[k:k + 2]) for (r, _), k in zip(refs, (1, 5, 2, 6, 0, 3, 4))]
  before = dict(any_sampler.stats)
  got = any_sampler.generate(prompts, max_new_tokens=MAX_NEW, sampling=Sampling(), eos_ids=(),
                         stop_sequences=stops)
  assert any_sampler.stats["prefix_tokens"] - before.get("prefix_tokens", 0) == 20
  assert any_sampler.stats["prefill_rows"] - before.get("prefill_rows", 0) > 4, "expected refills"
  for i, (c, (ref, margins)) in enumerate(zip(got, refs)):
    cut = min((j for j in range(len(ref) - 1) if tuple(ref[j:j + 2]) in stops), default=len(ref))
    assert_greedy_equal(c.tokens, ref[:cut], margins, f"prompt {i}")
  assert len({len(c.tokens) for c in got}) > 2


def test_compilations_are_bounded(sampler):
  before = dict(sampler.compilations)
  lengths = np.random.default_rng(3).integers(1, 17, size=20)
  for eos in ((2,), (5, 6)):  # stop rules are arrays: changing them compiles nothing new
    sampler.generate(random_prompts(lengths, seed=4), max_new_tokens=MAX_NEW, sampling=Sampling(),
                     eos_ids=eos)
  new = {k: v - before.get(k, 0) for k, v in sampler.compilations.items()}
  buckets = {8 if n <= 8 else 16 for n in lengths}
  # Per length bucket at most one decode loop per batch bucket (4, then the tail shrinks to 2 and 1) and
  # refills of 1, 2 or 4 rows (some compiled earlier).
  assert new.get("decode", 0) <= 3 * len(buckets) and new.get("refill", 0) <= 3 * len(buckets), new


def test_tail_shrinks_the_batch_and_keeps_utilisation_high(model):
  """Mixed output lengths (EOS on 1/12 of the vocabulary, so roughly geometric): once the queue is dry the
  live rows move into smaller batches. Decoded slots are counted, not timed, so the bound is exact: this
  workload was 75% before the shrink (every tail step ran all 8 rows) and is 97% with it."""
  cfg = dataclasses.replace(TEST_SAMPLE, max_batch=8, chunk_steps=32)
  sampler = Sampler(model, config=cfg)
  prompts = random_prompts([6] * 24, seed=2)
  eos = np.random.default_rng(1).choice(np.arange(3, TINY.vocab_size), TINY.vocab_size // 12, replace=False)
  out = sampler.generate(prompts, max_new_tokens=32, sampling=Sampling(1.0), eos_ids=eos.tolist())
  for i in (4, 6, 19):  # the longest rows, decoded to the end in shrunk batches: alone they agree
    alone = sampler.generate([prompts[i]], max_new_tokens=32, sampling=Sampling(1.0), eos_ids=eos.tolist(),
                             seeds=np.asarray([[cfg.sampling.seed, i]], np.uint32))[0]
    _assert_same(alone, out[i])
  assert len({c.num_decoded for c in out}) > 8
  assert sampler.compilations["compact"] >= 2
  assert sampler.stats["useful_decode_tokens"] / sampler.stats["decode_slots"] >= 0.9, dict(sampler.stats)


def test_paged_cache_samples_what_the_contiguous_one_does(sampler, paged, prompts):
  """Sampled (temperature 1, top-p 0.9), not only greedy: the same tokens, log-probs within float tolerance,
  with refills (6 prompts on 4 rows) and the tail compacted."""
  seeds = np.stack([np.full(6, 3, np.uint32), np.arange(6, dtype=np.uint32)], 1)
  for a, b in zip(_sampled(sampler, prompts, seeds), _sampled(paged, prompts, seeds)):
    _assert_same(a, b)

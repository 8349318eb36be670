"""8-device generation and scoring (data x fsdp x tensor = 2 x 2 x 2, serving rules) equal one device."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from hb_jax.config import MeshConfig
from hb_jax.parallel import make_mesh
from hb_jax.sample.sampler import Sampler
from hb_jax.sample.sampling import Sampling
from hb_jax.sample.scoring import Scorer

from .common import TEST_SAMPLE, random_prompts, tiny_model


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py forces 8 CPU ones)")
def test_sharded_generation_and_scoring_equal_single_device():
  model = tiny_model(3)
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  prompts = random_prompts([9, 12, 10, 16], seed=5)  # one 16-token bucket, batch 4 split 4 ways
  kw = dict(max_new_tokens=6, sampling=Sampling(0.7), eos_ids=())  # per-row keys, no sort
  sharded = Sampler(model, mesh, TEST_SAMPLE)
  kv_spec = sharded.params["layers"]["self_attn"]["k_proj"]["kernel"][...].sharding.spec
  assert "tensor" in tuple(kv_spec), kv_spec  # 2 KV heads split over tensor=2
  got = sharded.generate(prompts, **kw)
  want = Sampler(model, None, TEST_SAMPLE).generate(prompts, **kw)
  # A paged cache whose pool splits over the 4 batch shards: each shard's rows on its own pages.
  paged = Sampler(model, mesh, dataclasses.replace(TEST_SAMPLE, page_size=4)).generate(prompts, **kw)
  for a, b, c in zip(got, want, paged):
    assert a.tokens.tolist() == b.tokens.tolist() == c.tokens.tolist()
    np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c.logprobs, b.logprobs, rtol=1e-5, atol=1e-5)
  ctxs, conts = prompts, random_prompts([3, 1, 4, 2], seed=6)
  np.testing.assert_allclose(Scorer(model, mesh, TEST_SAMPLE).loglikelihood(ctxs, conts),
                             Scorer(model, None, TEST_SAMPLE).loglikelihood(ctxs, conts), rtol=1e-5)

"""The device programs stand apart from the engines: built from abstract inputs (no weights) they lower to
exactly the programs the Sampler and the Scorer run, and engines share their compiled programs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from hb_jax.config import MeshConfig
from hb_jax.model.llama import abstract_model
from hb_jax.parallel import SERVE_RULES, make_mesh, param_shardings, single_device_mesh
from hb_jax.sample import programs
from hb_jax.sample.sampler import Sampler
from hb_jax.sample.sampling import Sampling
from hb_jax.sample.scoring import Scorer

from .common import TEST_SAMPLE, TINY, random_prompts, tiny_model


def _abstract(tree, sharding=None):
  """ShapeDtypeStructs of a tree's arrays, with `sharding` or else each array's own."""
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding or a.sharding)
                      if isinstance(a, jax.Array) else a, tree)


class _Recording:
  """Remembers, abstractly, the first call an engine makes of each program (its arguments as it passed them)."""

  def __init__(self, engine):
    self.calls, run = {}, engine.run

    def recording_run(program, *args, **kwargs):
      self.calls.setdefault(program, (_abstract(args), kwargs))
      return run(program, *args, **kwargs)
    engine.run = recording_run


@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (2, 2, 2)])
def test_programs_lower_from_abstract_inputs_to_the_engines_programs(mesh_shape):
  """What a preflight does: refill, decode and the scoring forward built from the config alone (graphdef,
  param shapes and shardings, state shapes and shardings, host arrays replicated on the mesh) lower to the
  very programs the Sampler and the Scorer ran."""
  if jax.device_count() < np.prod(mesh_shape):
    pytest.skip("needs 8 devices (tests/conftest.py forces 8 CPU ones)")
  mesh = single_device_mesh() if mesh_shape == (1, 1, 1) else make_mesh(MeshConfig(*mesh_shape))
  model = tiny_model(0)
  sampler, scorer = Sampler(model, mesh, TEST_SAMPLE), Scorer(model, mesh, TEST_SAMPLE)
  ran_sampler, ran_scorer = _Recording(sampler), _Recording(scorer)
  spec = programs.DecodeSpec(Sampling(0.7, 0, 0.9), max_new_tokens=8, chunk_steps=4)
  prompts = random_prompts([16, 14, 9, 13, 15], seed=1)  # one 16-token bucket: batch 4, refills of 1 row
  sampler.generate(prompts, max_new_tokens=8, sampling=spec.sampling, eos_ids=(2,), stop_sequences=[(5, 6)])
  scorer.loglikelihood(prompts[:4], random_prompts([1, 3, 2, 2], seed=2))  # one batch of 4 rows of 16 slots

  graphdef, shapes = abstract_model(TINY)
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes,
                        param_shardings(shapes, SERVE_RULES, mesh))
  replicated = NamedSharding(mesh, P())
  host = lambda shape, dtype=jnp.int32: jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)
  batch, length, slots = 4, 16, 16 + spec.max_new_tokens
  with jax.set_mesh(mesh):
    state_shardings = programs.init_state.lower(TINY, batch, slots, spec.max_new_tokens).compile().output_shardings
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         jax.eval_shape(lambda: programs.init_state(TINY, batch, slots, spec.max_new_tokens)),
                         state_shardings)
    rule = _abstract(programs.StopRule.make((2,), [(5, 6)]), replicated)
    built = {
        programs.refill: (params, state, rule, None, host((batch, length)), host((batch, length)),
                          host((batch, length)), host((batch, 2), jnp.uint32), host((batch,))),
        programs.decode: (params, state, rule, None, host((batch,), bool), host(())),
        programs.loglikelihood: (params, None, *[host((batch, length))] * 4, host((batch, length), jnp.float32)),
    }
    for program, args in built.items():
      ran_args, static = {**ran_sampler.calls, **ran_scorer.calls}[program]
      want = program.lower(*ran_args, **static).as_text()
      assert program.lower(graphdef, *args, **static).as_text() == want, (
          f"{program.__name__}: built from the config it lowers to another program than the engine ran")


def test_engines_share_compiled_programs():
  """A second engine on the same model and shapes compiles nothing and computes the same."""
  model = tiny_model(1)
  prompts = random_prompts([5, 9, 3, 12], seed=3)
  kw = dict(max_new_tokens=6, sampling=Sampling(1.0, 0, 0.9), eos_ids=())
  first = Sampler(model, config=TEST_SAMPLE)
  want = first.generate(prompts, **kw)
  assert first.compilations["decode"] >= 1 and first.compilations["refill"] >= 1
  second = Sampler(model, config=TEST_SAMPLE)
  got = second.generate(prompts, **kw)
  assert not second.compilations, dict(second.compilations)
  for a, b in zip(got, want):
    assert a.tokens.tolist() == b.tokens.tolist() and a.logprobs.tobytes() == b.logprobs.tobytes()
  ctxs, conts = prompts, random_prompts([2, 1, 3, 2], seed=4)
  ll = Scorer(model, config=TEST_SAMPLE).loglikelihood(ctxs, conts)
  again = Scorer(model, config=TEST_SAMPLE)
  assert again.loglikelihood(ctxs, conts).tobytes() == ll.tobytes() and not again.compilations

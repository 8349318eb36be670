"""What the Sampler and the Scorer share: one model's parameters placed on a mesh, the shared-prefix KV, and
the bookkeeping of the device programs they run (hb_jax.sample.programs)."""
from __future__ import annotations

import collections
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from hb_jax.config import SampleConfig
from hb_jax.model.kv_cache import KVCache
from hb_jax.model.llama import Llama
from hb_jax.parallel import SERVE_RULES, Rules, param_shardings, single_device_mesh
from hb_jax.sample import prefix as prefix_kv
from hb_jax.sample import programs


class Engine:
  """A model on a mesh for generation or scoring. `compilations` counts the programs this engine traced
  (= compiled) by name; the jit caches are shared, so a second engine with the same model and shapes
  compiles (and counts) nothing. `stats` counts tokens and rows by kind."""

  def __init__(self, model: Llama, mesh: Mesh | None = None, config: SampleConfig = SampleConfig(), *,
               rules: Rules = SERVE_RULES, params=None):
    self.cfg = model.cfg
    self.config = config
    self.rules = rules
    self.mesh = mesh or single_device_mesh()
    self.graphdef, state = nnx.split(model)
    if params is None:
      with jax.set_mesh(self.mesh):
        params = jax.device_put(state, param_shardings(state, rules, self.mesh))
    self.params = params
    self.compilations: collections.Counter = collections.Counter()
    self.stats: collections.Counter = collections.Counter()

  def run(self, program, *args, **kwargs):
    """program(*args, **kwargs), its trace (if this call compiles it) counted in `compilations`."""
    with programs.count_traces(self.compilations):
      return program(*args, **kwargs)

  def shared_prefix(self, seqs: Sequence[np.ndarray], prefix: int | str | None, *, per_layer: bool
                    ) -> tuple[KVCache | None, int]:
    """(KV of the prefix every sequence shares, or None; its length). prefix: 'auto' (the common prefix when
    at least config.prefix_min_tokens long, each sequence keeping >= 1 token of its own), an explicit
    length, or None/0. per_layer: the layout programs.prefill_prefix returns. Call inside the mesh."""
    n = prefix_kv.prefix_length(seqs, prefix, self.config.prefix_min_tokens)
    if not n:
      return None, 0
    arrays = map(jnp.asarray, prefix_kv.padded_prefix(seqs[0][:n]))
    self.stats["prefix_tokens"] += n
    return self.run(programs.prefill_prefix, self.graphdef, self.params, *arrays, per_layer=per_layer), n

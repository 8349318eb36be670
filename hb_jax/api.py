"""The small public Python API: `load(path, mesh=None) -> LanguageModel`.

    from hb_jax import api
    lm = api.load("runs/demo/models/m2")
    logits = lm.logits(np.array([[1, 450, 4996]]))      # float32 [B, T, V]

The model's graph and parameters are split once; every call runs a jitted pure function of
(params, arrays), so no Python object traversal happens per call.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from hb_jax import model_folder
from hb_jax.config import ModelConfig
from hb_jax.model.llama import Llama, abstract_model
from hb_jax.parallel import SERVE_RULES, Rules, batch_sharding, single_device_mesh


def build_model(cfg: ModelConfig, params: dict[str, Any]) -> Llama:
  """A Llama module holding `params` (a nested dict of arrays, e.g. from restore_params)."""
  graphdef, state = abstract_model(cfg)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


@functools.partial(jax.jit, static_argnums=0)
def _forward_logits(graphdef, state, tokens):
  model = nnx.merge(graphdef, state)
  logits, _ = model(tokens)
  return logits


class LanguageModel:
  """A loaded model: config, parameters on a mesh, and the tokenizer when the folder has one."""

  def __init__(self, cfg: ModelConfig, params: dict[str, Any], mesh: Mesh, tokenizer=None,
               path: str | None = None, rules: Rules = SERVE_RULES):
    self.cfg = cfg
    self.mesh = mesh
    self.rules = rules
    self.tokenizer = tokenizer
    self.path = path
    self.model = build_model(cfg, params)
    self.graphdef, self.state = nnx.split(self.model)

  @property
  def params(self) -> dict[str, Any]:
    return nnx.to_pure_dict(self.state)

  def put_batch(self, array: np.ndarray) -> jax.Array:
    """Places a [B, ...] host array (the same on every process) on the mesh, split over the data axes that
    divide B (replicated over the others).

    Built from a callback so it also works when the mesh spans several processes: each process fills
    only the shards its own devices hold.
    """
    sharding = batch_sharding(self.mesh, array.shape, self.rules)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

  def logits(self, tokens) -> np.ndarray:
    """float32 [B, T, V] logits for int32 [B, T] tokens (no padding assumed: one segment per row)."""
    tokens = np.asarray(tokens, dtype=np.int32)
    if tokens.ndim != 2:
      raise ValueError(f"logits: tokens must be [batch, length], found shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= self.cfg.vocab_size):
      raise ValueError(f"logits: token ids must be in [0, {self.cfg.vocab_size}), found "
                       f"[{tokens.min()}, {tokens.max()}]")
    with jax.set_mesh(self.mesh):
      out = _forward_logits(self.graphdef, self.state, self.put_batch(tokens))
    return fetch(out)


  # ---- generation and scoring (hb_jax/sample); engines are built on first use and kept.
  def sampler(self, config=None):
    """The batched KV-cache generation engine (hb_jax.sample.sampler.Sampler) for `config`."""
    from hb_jax.config import SampleConfig
    from hb_jax.sample.sampler import Sampler

    config = config or SampleConfig()
    engines = self.__dict__.setdefault("_samplers", {})
    if config not in engines:
      detok = self.tokenizer.decode if self.tokenizer is not None else None
      engines[config] = Sampler(self.model, self.mesh, config, rules=self.rules, detokenize=detok)
    return engines[config]

  def scorer(self, config=None):
    """Teacher-forced scoring engine (hb_jax.sample.scoring.Scorer) for `config`."""
    from hb_jax.config import SampleConfig
    from hb_jax.sample.scoring import Scorer

    config = config or SampleConfig()
    engines = self.__dict__.setdefault("_scorers", {})
    if config not in engines:
      engines[config] = Scorer(self.model, self.mesh, config, rules=self.rules)
    return engines[config]

  def generate(self, prompts, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               top_k: int = 0, seed=0, stop=(), return_logprobs: bool = False, *, config=None):
    """Continues each prompt (token-id lists -> lists of new ids; strings -> strings, BOS added).

    Stops after EOS or another of the model's end ids (cfg.eos_ids; excluded) or max_new_tokens.
    temperature 0 is greedy. `seed`: an int (row i uses fold_in(PRNGKey(seed), i)) or one int per prompt
    (e.g. a hash of the record id). `stop`: strings (cut from the text; token results keep the tokens
    through the one completing the string) and/or token-id sequences (excluded). With return_logprobs each
    result is (tokens_or_text, float32 log-probs).
    """
    from hb_jax.sample import plan
    from hb_jax.sample.sampling import Sampling

    prompts = list(prompts)
    as_text = bool(prompts) and isinstance(prompts[0], str)
    if any(isinstance(p, str) != as_text for p in prompts):
      raise ValueError("generate: prompts must be all strings or all token-id lists, found both")
    if as_text:
      if self.tokenizer is None:
        raise ValueError(f"generate: string prompts need a tokenizer, but {self.path} has none")
      ids = [self.tokenizer.encode(p, bos=True) for p in prompts]
    else:
      ids = [list(p) for p in prompts]
    if isinstance(seed, (int, np.integer)):
      seeds = plan.seed_pairs_from_int(int(seed), len(ids))
    else:
      seeds = plan.seed_pairs_from_ints(list(seed))
      if len(seeds) != len(ids):
        raise ValueError(f"generate: {len(ids)} prompts but {len(seeds)} seeds")
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    bad = [s for s in stop if not isinstance(s, str) and not (isinstance(s, (list, tuple)) and s)]
    if bad:
      raise ValueError(f"generate: stop takes strings and non-empty token-id sequences (e.g. stop=[[5]] for "
                       f"token 5), found {bad[0]!r}")
    stop_strings = tuple(s for s in stop if isinstance(s, str))
    stop_sequences = tuple(tuple(s) for s in stop if not isinstance(s, str))
    completions = self.sampler(config).generate(
        ids, max_new_tokens=max_new_tokens, sampling=Sampling(temperature, top_k, top_p), seeds=seeds,
        stop_sequences=stop_sequences, stop_strings=stop_strings)
    results = []
    for c in completions:
      out = c.tokens.tolist()
      if as_text:
        out = self.tokenizer.decode(out)
        for s in stop_strings:
          out = out.split(s, 1)[0] if s in out else out
      results.append((out, c.logprobs) if return_logprobs else out)
    return results

  def loglikelihood(self, contexts, continuations) -> np.ndarray:
    """float32 [N]: summed log p(continuation | context) for token-id lists, one teacher-forced pass."""
    return self.scorer().loglikelihood(contexts, continuations)


def fetch(x: jax.Array) -> np.ndarray:
  """A (possibly multi-process) global array as one host numpy array on every process."""
  if not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def load(path, mesh: Mesh | None = None, rules: Rules = SERVE_RULES, *, attention: str | None = None) -> LanguageModel:
  """Opens a model folder onto `mesh` (default: one device), resharding the stored params as needed;
  `attention` (ModelConfig.attention, default auto) says how its forward passes compute attention."""
  path = epath.Path(path)
  cfg = model_folder.read_model_config(path)
  if attention:
    cfg = dataclasses.replace(cfg, attention=attention)
  mesh = mesh or single_device_mesh()
  params = model_folder.restore_params(path, cfg, mesh, rules)
  tokenizer = None
  tok_path = model_folder.tokenizer_path(path)
  if tok_path is not None:
    from hb_jax.tokenizer import load_tokenizer  # the data layer's module; absent tokenizers are fine
    tokenizer = load_tokenizer(tok_path)
  return LanguageModel(cfg, params, mesh, tokenizer=tokenizer, path=str(path), rules=rules)

"""Shardings (hb_jax.parallel): any factorisation of 8 simulated devices gives single-device logits within 1e-5
relative; parameters a mesh axis cannot divide are refused by name (KV heads excepted: replicated, logged once);
activations, caches and batches fall back silently; config rules override the tables."""
from __future__ import annotations

import logging

import jax
import numpy as np
import pytest
from flax import nnx

from helpers import make_hf_llama, random_tokens
from hb_jax import api, model_folder, parallel
from hb_jax.config import ConfigError, MeshConfig, ModelConfig, build
from hb_jax.model.kv_cache import KVCache
from hb_jax.model.llama import Llama
from hb_jax.parallel import (SERVE_RULES, TRAIN_RULES, abstract_params, cache_shardings, logical_to_spec, make_mesh,
                             param_shardings, single_device_mesh, undivided_params, with_overrides)
from jax.sharding import PartitionSpec as P

MESHES = [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2), (1, 2, 4), (2, 4, 1), (4, 1, 2)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """GQA model with 2 KV heads, so tensor=4 and tensor=8 must replicate KV heads."""
  tmp = tmp_path_factory.mktemp("shard")
  _, hf_dir = make_hf_llama(tmp, num_key_value_heads=2, num_attention_heads=8, hidden_size=64,
                            intermediate_size=96, vocab_size=128)
  from hb_jax.convert import convert
  convert(hf_dir, tmp / "ours")
  return tmp / "ours"


@pytest.fixture(scope="module")
def reference(model_dir):
  lm = api.load(model_dir, mesh=single_device_mesh())
  tokens = random_tokens(lm.cfg.vocab_size, 8, 24, seed=3)
  return tokens, lm.logits(tokens)


@pytest.mark.parametrize("rules_name", ["serve", "train"])
@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_logits_equal_single_device(model_dir, reference, shape, rules_name):
  tokens, ref = reference
  rules = SERVE_RULES if rules_name == "serve" else TRAIN_RULES
  mesh = make_mesh(MeshConfig(*shape))
  lm = api.load(model_dir, mesh=mesh, rules=rules)
  out = lm.logits(tokens)
  scale = np.max(np.abs(ref))
  assert np.max(np.abs(out - ref)) <= 1e-5 * scale
  # The parameters really are split: a tensor-parallel q_proj holds 1/tensor of the heads per device.
  q = lm.params["layers"]["self_attn"]["q_proj"]["kernel"]
  shard_heads = q.addressable_shards[0].data.shape[2]
  assert shard_heads == 8 // shape[2]


GQA = ModelConfig(vocab_size=128, hidden_size=64, num_layers=2, num_heads=8, num_kv_heads=2, intermediate_size=96)


def _spec(shardings, name):
  node = shardings
  for part in name.split("."):
    node = node[part]
  return node.spec


def test_kv_heads_fewer_than_tensor_axis_are_replicated_and_logged_once(caplog):
  parallel._logged_replications.clear()  # another test of this process may have logged this layout already
  mesh = make_mesh(MeshConfig(1, 1, 8))
  with caplog.at_level(logging.INFO, logger="hb_jax.parallel"):
    shardings = param_shardings(GQA, TRAIN_RULES, mesh)
    param_shardings(GQA, SERVE_RULES, mesh)
  assert _spec(shardings, "layers.self_attn.k_proj.kernel") == P(None, None, None, None)
  assert _spec(shardings, "layers.self_attn.q_proj.kernel") == P(None, None, "tensor", None)
  logged = [r.getMessage() for r in caplog.records if "KV heads" in r.getMessage()]
  assert len(logged) == 1 and "2 KV heads on tensor=8" in logged[0], logged
  # FSDP shards the embedding dimension in training, never in serving.
  mesh = make_mesh(MeshConfig(1, 4, 2))
  assert _spec(param_shardings(GQA, TRAIN_RULES, mesh), "layers.mlp.up_proj.kernel") == P(None, "fsdp", "tensor")
  assert _spec(param_shardings(GQA, SERVE_RULES, mesh), "layers.mlp.up_proj.kernel") == P(None, None, "tensor")


def test_a_parameter_dimension_an_axis_does_not_divide_is_named():
  odd_vocab = ModelConfig(vocab_size=130, hidden_size=64, num_layers=2, num_heads=8, num_kv_heads=2,
                          intermediate_size=96)
  with pytest.raises(ConfigError, match=r"parameter embed_tokens\.embedding dim 0 \(130\) not divisible by "
                     r"tensor=4 \(logical axis 'vocab'\) \(and 1 more\); .* mesh\.rules"):
    param_shardings(odd_vocab, SERVE_RULES, make_mesh(MeshConfig(2, 1, 4)))
  narrow = ModelConfig(vocab_size=128, hidden_size=36, num_layers=2, num_heads=6, num_kv_heads=2,
                       intermediate_size=96)
  problems = undivided_params(narrow, {"data": 1, "fsdp": 8, "tensor": 1}, TRAIN_RULES)
  assert "embed_tokens.embedding dim 1 (36) not divisible by fsdp=8 (logical axis 'embed')" in problems
  assert len(problems) == 9  # every tensor with an 'embed' dimension: embedding, 7 layer kernels, head
  assert undivided_params(narrow, {"data": 1, "fsdp": 8, "tensor": 1}, SERVE_RULES) == []
  # Restoring a model folder onto such a mesh fails the same way, before anything is read.
  with pytest.raises(ConfigError, match=r"dim 1 \(36\) not divisible by fsdp=8"):
    abstract_params(narrow, make_mesh(MeshConfig(1, 8, 1)), TRAIN_RULES)
  # A tuple of mesh axes names the product that fails; one mesh axis never shards two dims of one tensor.
  rules = with_overrides(TRAIN_RULES, [("embed", ("fsdp", "tensor"))])
  assert any("dim 1 (36) not divisible by fsdp=2 x tensor=4" in p
             for p in undivided_params(narrow, {"data": 1, "fsdp": 2, "tensor": 4}, rules))
  rules = with_overrides(TRAIN_RULES, [("embed", "tensor")])
  assert ("layers.mlp.up_proj.kernel dim 2 (96) cannot use tensor=4: it already shards dim 1 (logical axis 'mlp')"
          in undivided_params(GQA, {"data": 1, "fsdp": 1, "tensor": 4}, rules))


def test_activations_caches_and_batches_fall_back_silently():
  # Their sizes are runtime choices (a decode batch of 1 on data=8), so an axis that does not divide is dropped.
  mesh = {"data": 2, "fsdp": 4, "tensor": 1}
  assert logical_to_spec(("batch", None), (8, 5), TRAIN_RULES, mesh) == P(("data", "fsdp"), None)
  assert logical_to_spec(("batch", None), (2, 5), TRAIN_RULES, mesh) == P("data", None)
  assert logical_to_spec(("batch", None), (1, 5), TRAIN_RULES, mesh) == P(None, None)
  mesh = make_mesh(MeshConfig(2, 1, 4))
  stacked = jax.eval_shape(lambda: KVCache.zeros(2, 1, 16, 4, 8))
  c = cache_shardings(stacked, SERVE_RULES, mesh)
  assert c.k.spec == c.v.spec == P(None, None, "tensor", None, None)  # heads over tensor, batch 1 whole
  assert c.positions.spec == P(None, None) and c.index.spec == P(None)
  per_layer = jax.eval_shape(lambda: KVCache.zeros(2, 4, 16, 2, 8, per_layer=True))
  c = cache_shardings(per_layer, SERVE_RULES, mesh)
  assert [s.spec for s in c.k] == [P("data", None, None, None)] * 2  # 2 KV heads on tensor=4: replicated
  assert c.segment_ids.spec == P("data", None)
  assert parallel.batch_sharding(mesh, (3, 7), SERVE_RULES).spec == P(None, None)


def test_config_rules_override_the_table():
  mesh = make_mesh(MeshConfig(1, 4, 2))
  rules = with_overrides(TRAIN_RULES, build(MeshConfig, {"rules": [["embed", None], ["mlp", ["fsdp", "tensor"]]]},
                                            "config.train.mesh"))
  shardings = param_shardings(GQA, rules, mesh)
  assert _spec(shardings, "layers.mlp.up_proj.kernel") == P(None, None, ("fsdp", "tensor"))
  assert _spec(shardings, "layers.self_attn.q_proj.kernel") == P(None, None, "tensor", None)
  assert with_overrides(SERVE_RULES, MeshConfig()) == SERVE_RULES
  for bad, message in [([["embd", None]], r"config\.train\.mesh\.rules: entry 0 .*unknown logical axis 'embd'"),
                       ([["embed", "model"]], r"config\.train\.mesh\.rules: entry 0 .*unknown mesh axis 'model'"),
                       ([["embed"]], r"config\.train\.mesh\.rules: entry 0 .*expected a \[logical axis, mesh axes\]")]:
    with pytest.raises(ConfigError, match=message):
      build(MeshConfig, {"rules": bad}, "config.train.mesh")


def test_abstract_params_is_the_stored_tree():
  mesh = make_mesh(MeshConfig(1, 4, 2))
  shapes = abstract_params(GQA)
  real = nnx.to_pure_dict(nnx.state(Llama(GQA, rngs=nnx.Rngs(0)), nnx.Param))
  assert jax.tree.structure(shapes) == jax.tree.structure(real)
  assert all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(real)))
  sharded = abstract_params(GQA, mesh, TRAIN_RULES)
  assert jax.tree.map(lambda a: a.sharding, sharded) == param_shardings(GQA, TRAIN_RULES, mesh)
  with pytest.raises(TypeError, match="nnx.State of Params"):
    param_shardings(real, TRAIN_RULES, mesh)  # a plain dict has no logical axes


def test_sharded_init_never_materialises_unsharded():
  """Abstract shapes -> shardings -> jitted init with out_shardings: each device holds only its shard."""
  cfg = ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
                    intermediate_size=128)
  mesh = make_mesh(MeshConfig(1, 4, 2))
  shardings = param_shardings(cfg, TRAIN_RULES, mesh)

  def init():
    return nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(0))))

  init = jax.jit(init, out_shardings=shardings)
  params = init()
  emb = params["embed_tokens"]["embedding"]
  assert emb.addressable_shards[0].data.shape == (256 // 2, 64 // 4)
  # Same values as an unsharded init with the same seed.
  plain = nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(0))))
  np.testing.assert_array_equal(np.asarray(emb), np.asarray(plain["embed_tokens"]["embedding"]))


def test_checkpoint_restores_onto_any_mesh(model_dir, tmp_path):
  mesh = make_mesh(MeshConfig(1, 4, 2))
  cfg = model_folder.read_model_config(model_dir)
  params = model_folder.restore_params(model_dir, cfg, mesh, TRAIN_RULES)
  model_folder.save_model_folder(tmp_path / "resaved", cfg, params)
  back = model_folder.restore_params(tmp_path / "resaved", cfg, single_device_mesh())
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

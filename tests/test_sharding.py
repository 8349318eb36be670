"""Any factorisation of 8 simulated devices gives single-device logits within 1e-5 relative."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from helpers import make_hf_llama, random_tokens
from hb_jax import api, checkpoint
from hb_jax.config import MeshConfig, ModelConfig
from hb_jax.model.llama import Llama
from hb_jax.parallel import (SERVE_RULES, TRAIN_RULES, logical_to_spec, make_mesh, param_specs,
                             single_device_mesh)
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


def test_kv_heads_fewer_than_tensor_axis_are_replicated():
  mesh = {"data": 1, "fsdp": 1, "tensor": 8}
  assert logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), (2, 64, 2, 8), TRAIN_RULES,
                         mesh) == P(None, None, None, None)
  assert logical_to_spec(("layers", "embed", "heads", "head_dim"), (2, 64, 8, 8), TRAIN_RULES,
                         mesh) == P(None, None, "tensor", None)
  # FSDP shards the embedding dimension in training, never in serving.
  mesh = {"data": 1, "fsdp": 4, "tensor": 2}
  assert logical_to_spec(("embed", "mlp"), (64, 96), TRAIN_RULES, mesh) == P("fsdp", "tensor")
  assert logical_to_spec(("embed", "mlp"), (64, 96), SERVE_RULES, mesh) == P(None, "tensor")
  # The batch uses both data axes when it divides them, only a prefix when not.
  mesh = {"data": 2, "fsdp": 4, "tensor": 1}
  assert logical_to_spec(("batch", None), (8, 5), TRAIN_RULES, mesh) == P(("data", "fsdp"), None)
  assert logical_to_spec(("batch", None), (2, 5), TRAIN_RULES, mesh) == P("data", None)


def test_sharded_init_never_materialises_unsharded():
  """Abstract shapes -> shardings -> jitted init with out_shardings: each device holds only its shard."""
  cfg = ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
                    intermediate_size=128)
  mesh = make_mesh(MeshConfig(1, 4, 2))
  abstract = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  specs = param_specs(abstract_state, TRAIN_RULES, mesh)
  shardings = jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), nnx.to_pure_dict(specs))

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
  cfg = checkpoint.read_model_config(model_dir)
  params = checkpoint.restore_params(model_dir, cfg, mesh, TRAIN_RULES)
  checkpoint.save_model_folder(tmp_path / "resaved", cfg, params)
  back = checkpoint.restore_params(tmp_path / "resaved", cfg, single_device_mesh())
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

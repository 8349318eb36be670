"""Conversion is proven against transformers: HF and Meta folders -> hb_jax logits, and back to HF."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import (LLAMA31_SCALING, assert_logits_close, convert_hf, hf_logits, make_hf_llama,
                     random_tokens)
from hb_jax import api
from hb_jax.model_folder import CheckpointError, is_model_folder
from hb_jax.config import ConfigError
from hb_jax.convert import ConversionError, convert, export_hf
from hb_jax.convert.sources import rotate_half_to_interleaved

VARIANTS = {
    "mha_theta1e4": dict(),
    "gqa_theta5e5": dict(num_key_value_heads=2, rope_theta=5e5),
    "mqa_llama31": dict(num_key_value_heads=1, rope_theta=5e5, rope_scaling=LLAMA31_SCALING),
    "gqa_tied": dict(num_key_value_heads=2, tie_word_embeddings=True),
}


@pytest.mark.parametrize("spelling", ["new", "old"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hf_logits_match_transformers(tmp_path, variant, spelling):
  model, hf_dir = make_hf_llama(tmp_path, spelling=spelling, **VARIANTS[variant])
  cfg_json = json.loads((hf_dir / "config.json").read_text())
  assert ("rope_parameters" in cfg_json) == (spelling == "new")
  lm = api.load(convert_hf(hf_dir, tmp_path / "ours"))
  tokens = random_tokens(lm.cfg.vocab_size, batch=3, length=48)
  assert_logits_close(lm.logits(tokens), hf_logits(model, tokens), rel=1e-4)


def test_sharded_safetensors_with_index(tmp_path):
  model, hf_dir = make_hf_llama(tmp_path, num_key_value_heads=2)
  sharded = tmp_path / "sharded"
  model.save_pretrained(sharded, safe_serialization=True, max_shard_size="20KB")
  assert (sharded / "model.safetensors.index.json").exists()
  assert len(list(sharded.glob("*.safetensors"))) > 2
  lm = api.load(convert_hf(sharded, tmp_path / "ours"))
  tokens = random_tokens(lm.cfg.vocab_size, 2, 17)
  assert_logits_close(lm.logits(tokens), hf_logits(model, tokens))


def _write_meta_folder(model, folder, shards: int, vocab_parallel_embedding: bool = False):
  """Builds a Meta-layout checkpoint (interleaved RoPE rows, model-parallel shards) from a HF model."""
  import torch

  cfg = model.config
  sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
  n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
  meta = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
          "output.weight": sd["lm_head.weight"], "rope.freqs": torch.zeros(4)}
  names = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
           "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
           "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
           "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
           "post_attention_layernorm": "ffn_norm"}
  for i in range(cfg.num_hidden_layers):
    for hf, mt in names.items():
      w = sd[f"model.layers.{i}.{hf}.weight"]
      if mt == "attention.wq":
        w = torch.from_numpy(rotate_half_to_interleaved(w.numpy(), n_heads))
      if mt == "attention.wk":
        w = torch.from_numpy(rotate_half_to_interleaved(w.numpy(), n_kv))
      meta[f"layers.{i}.{mt}.weight"] = w
  axis = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1,
          "tok_embeddings": 0 if vocab_parallel_embedding else 1}
  folder.mkdir(parents=True)
  for r in range(shards):
    part = {}
    for k, w in meta.items():
      key = k.split(".")[-2] if k.startswith("layers.") else k.split(".")[0]
      ax = axis.get(key)
      if ax is None or w.ndim == 1:
        part[k] = w.clone()
      else:
        part[k] = torch.chunk(w, shards, dim=ax)[r].clone()
    torch.save(part, folder / f"consolidated.{r:02d}.pth")
  (folder / "params.json").write_text(json.dumps({
      "dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": n_heads, "n_kv_heads": n_kv,
      "vocab_size": -1, "multiple_of": 8, "norm_eps": cfg.rms_norm_eps,
      "rope_theta": cfg.rope_parameters["rope_theta"]}))


@pytest.mark.parametrize("vocab_parallel", [False, True])
def test_meta_two_shards_match_transformers(tmp_path, vocab_parallel):
  model, _ = make_hf_llama(tmp_path, num_key_value_heads=2, vocab_size=96, rope_theta=5e5)
  meta_dir = tmp_path / "meta"
  _write_meta_folder(model, meta_dir, shards=2, vocab_parallel_embedding=vocab_parallel)
  lm = api.load(convert_hf(meta_dir, tmp_path / "ours"))
  assert lm.cfg.num_kv_heads == 2 and lm.cfg.vocab_size == 96
  tokens = random_tokens(lm.cfg.vocab_size, 2, 33)
  assert_logits_close(lm.logits(tokens), hf_logits(model, tokens))


def test_round_trip_hf_ours_hf_is_bit_exact(tmp_path):
  from safetensors.numpy import load_file
  from transformers import LlamaForCausalLM

  model, hf_dir = make_hf_llama(tmp_path, num_key_value_heads=2, rope_scaling=LLAMA31_SCALING)
  ours = convert_hf(hf_dir, tmp_path / "ours")
  export_hf(ours, tmp_path / "back")
  original = load_file(str(hf_dir / "model.safetensors"))
  back = load_file(str(tmp_path / "back" / "model.safetensors"))
  assert sorted(original) == sorted(back)
  for name in original:
    assert original[name].dtype == back[name].dtype, name
    np.testing.assert_array_equal(original[name], back[name], err_msg=name)
  reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "back").eval()
  tokens = random_tokens(model.config.vocab_size, 2, 20)
  np.testing.assert_array_equal(hf_logits(reloaded, tokens), hf_logits(model, tokens))


def test_export_shards_large_models(tmp_path):
  from transformers import LlamaForCausalLM

  model, hf_dir = make_hf_llama(tmp_path)
  ours = convert_hf(hf_dir, tmp_path / "ours")
  export_hf(ours, tmp_path / "back", max_shard_bytes=16_000)
  assert (tmp_path / "back" / "model.safetensors.index.json").exists()
  reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "back").eval()
  tokens = random_tokens(model.config.vocab_size, 1, 9)
  np.testing.assert_array_equal(hf_logits(reloaded, tokens), hf_logits(model, tokens))


# ---- bad input: a clear error naming the problem, nothing left at the output path ----

def _rewrite_tensors(hf_dir, edit):
  from safetensors.numpy import load_file, save_file

  path = hf_dir / "model.safetensors"
  tensors = load_file(str(path))
  edit(tensors)
  save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("problem,message", [
    ("dtype", "tensor model.layers.0.self_attn.q_proj.weight: expected a float dtype (float32, float16, "
              "bfloat16, float64), found int32"),
    ("missing", "missing tensor model.layers.1.mlp.up_proj.weight"),
    ("extra", "unexpected tensor model.layers.0.self_attn.q_proj.bias"),
    ("shape", "tensor model.layers.0.self_attn.k_proj.weight: expected shape (32, 32), found (31, 32)"),
])
def test_bad_tensors_are_named_and_nothing_is_written(tmp_path, problem, message):
  _, hf_dir = make_hf_llama(tmp_path)
  if problem == "dtype":  # an integer tensor would have been cast to nonsense weights
    _rewrite_tensors(hf_dir, lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.weight",
                                                     (t["model.layers.0.self_attn.q_proj.weight"] * 100).astype(np.int32)))
  elif problem == "missing":
    _rewrite_tensors(hf_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  elif problem == "extra":
    _rewrite_tensors(hf_dir, lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.bias",
                                                     np.zeros(32, np.float32)))
  else:
    _rewrite_tensors(hf_dir, lambda t: t.__setitem__("model.layers.0.self_attn.k_proj.weight",
                                                     np.zeros((31, 32), np.float32)))
  out = tmp_path / "out"
  with pytest.raises(ConversionError, match=message.replace("(", r"\(").replace(")", r"\)")):
    convert(hf_dir, out)
  assert not out.exists()


def test_unknown_architecture_and_format(tmp_path):
  _, hf_dir = make_hf_llama(tmp_path)
  cfg = json.loads((hf_dir / "config.json").read_text())
  cfg.update(model_type="mistral", architectures=["MistralForCausalLM"])
  (hf_dir / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ConfigError, match="unknown architecture"):
    convert(hf_dir, tmp_path / "out")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ConversionError, match="unknown checkpoint format"):
    convert(empty, tmp_path / "out2")
  assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_unreadable_file_is_an_error(tmp_path):
  _, hf_dir = make_hf_llama(tmp_path)
  (hf_dir / "model.safetensors").write_bytes(b"\x00garbage" * 10)
  with pytest.raises(ConversionError, match="unreadable safetensors"):
    convert(hf_dir, tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_cli_exit_codes(tmp_path):
  _, hf_dir = make_hf_llama(tmp_path)
  ok = subprocess.run([sys.executable, "tools/convert_llama.py", "--input", str(hf_dir), "--output",
                       str(tmp_path / "ours")], capture_output=True, text=True)
  assert ok.returncode == 0, ok.stderr
  assert is_model_folder(tmp_path / "ours")
  bad = subprocess.run([sys.executable, "tools/convert_llama.py", "--input", str(tmp_path / "nope"),
                        "--output", str(tmp_path / "x")], capture_output=True, text=True)
  assert bad.returncode != 0 and "not a folder" in bad.stderr
  again = subprocess.run([sys.executable, "tools/convert_llama.py", "--input", str(hf_dir), "--output",
                          str(tmp_path / "ours")], capture_output=True, text=True)
  assert again.returncode != 0 and "not empty" in again.stderr


def test_incomplete_model_folder_is_refused(tmp_path):
  _, hf_dir = make_hf_llama(tmp_path)
  ours = convert_hf(hf_dir, tmp_path / "ours")
  (ours / "model.json").unlink()
  with pytest.raises(CheckpointError, match="not finished being written"):
    api.load(ours)


def test_failed_overwrite_keeps_the_model_and_a_replaced_tokenizer_goes(tmp_path):
  from safetensors.numpy import load_file, save_file

  _, hf_dir = make_hf_llama(tmp_path)
  import tokenizers
  from tokenizers.models import WordLevel

  vocab = {"<s>": 1, "</s>": 2, "a": 3, "[UNK]": 0}
  tokenizers.Tokenizer(WordLevel(vocab, unk_token="[UNK]")).save(str(hf_dir / "tokenizer.json"))
  out = convert_hf(hf_dir, tmp_path / "ours")
  tokens = random_tokens(32, 1, 5)
  before = api.load(out).logits(tokens)
  # A bad input fails before the output is touched, even with overwrite.
  broken = tmp_path / "broken"
  broken.mkdir()
  for f in hf_dir.iterdir():
    (broken / f.name).write_bytes(f.read_bytes())
  tensors = load_file(str(broken / "model.safetensors"))
  tensors.pop("model.norm.weight")
  save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(ConversionError, match="missing tensor model.norm.weight"):
    convert(broken, out, overwrite=True)
  np.testing.assert_array_equal(api.load(out).logits(tokens), before)
  assert (out / "tokenizer.json").exists()
  # A model without that tokenizer replaces the folder: the old tokenizer must not be loaded with it.
  (hf_dir / "tokenizer.json").unlink()
  convert(hf_dir, out, overwrite=True)
  assert not (out / "tokenizer.json").exists() and api.load(out).tokenizer is None


def test_ambiguous_or_malformed_sources_are_named(tmp_path):
  from safetensors.numpy import save_file

  _, hf_dir = make_hf_llama(tmp_path)
  save_file({"model.norm.weight": np.zeros(32, np.float32)}, str(hf_dir / "zz_extra.safetensors"))
  with pytest.raises(ConversionError, match=r"tensor model.norm.weight is in both model.safetensors and "
                                            r"zz_extra.safetensors"):
    convert(hf_dir, tmp_path / "out")
  (hf_dir / "zz_extra.safetensors").unlink()
  (hf_dir / "model.safetensors.index.json").write_text("{}")
  with pytest.raises(ConversionError, match="index.json: expected a 'weight_map' object"):
    convert(hf_dir, tmp_path / "out")
  (hf_dir / "model.safetensors.index.json").write_text("{oops")
  with pytest.raises(ConversionError, match="index.json: not valid JSON"):
    convert(hf_dir, tmp_path / "out")
  (hf_dir / "model.safetensors.index.json").unlink()
  (hf_dir / "config.json").write_text("[1, 2]")
  with pytest.raises(ConfigError, match="config.json: expected a JSON object"):
    convert(hf_dir, tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_damaged_model_folder_is_named(tmp_path):
  import shutil

  _, hf_dir = make_hf_llama(tmp_path)
  ours = convert_hf(hf_dir, tmp_path / "ours")
  shutil.rmtree(ours / "params")
  with pytest.raises(CheckpointError, match=r"ours/params: not a readable Orbax checkpoint"):
    api.load(ours)
  (ours / "model.json").write_text("{")
  with pytest.raises(ConfigError, match=r"model.json: not valid JSON"):
    api.load(ours)


def test_meta_llama3_ids_and_tiktoken_tokenizer(tmp_path):
  from hb_jax.convert.hf_config import model_config_from_meta
  from hb_jax.convert.sources import _tokenizer_in

  params = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "rope_theta": 5e5}
  llama3 = model_config_from_meta(params, 128256, 224)
  assert (llama3.bos_id, llama3.eos_id, llama3.eos_ids) == (128000, 128001, (128001, 128008, 128009))
  assert (model_config_from_meta(params, 32000, 224).bos_id, model_config_from_meta(params, 32000, 224).eos_id) == (1, 2)
  (tmp_path / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")  # tiktoken: "<base64> <rank>" lines
  assert _tokenizer_in(tmp_path) is None
  (tmp_path / "tokenizer.json").write_text("{}")
  assert _tokenizer_in(tmp_path) == tmp_path / "tokenizer.json"


# ---- a list-valued eos_token_id (LLaMA-3.1-Instruct: [128001, 128008, 128009]) ----

def _set_eos(hf_dir, where: str, value) -> None:
  """Writes `value` as eos_token_id into config.json or generation_config.json (config.json then keeps 2)."""
  path = hf_dir / f"{where}.json"
  cfg = json.loads(path.read_text())
  cfg["eos_token_id"] = value
  path.write_text(json.dumps(cfg, indent=2))


@pytest.mark.parametrize("where", ["config", "generation_config"])
def test_list_eos_token_id_round_trips(tmp_path, where):
  from transformers import GenerationConfig

  from hb_jax.model_folder import read_model_config

  _, hf_dir = make_hf_llama(tmp_path)
  single = convert_hf(hf_dir, tmp_path / "single")  # one end id: model.json as before the field existed
  assert "extra_eos_ids" not in json.loads((single / "model.json").read_text())
  assert api.load(single).cfg.eos_ids == (2,)
  _set_eos(hf_dir, where, [2, 40, 41])
  ours = convert_hf(hf_dir, tmp_path / "ours")
  meta = json.loads((ours / "model.json").read_text())
  assert (meta["eos_id"], meta["extra_eos_ids"]) == (2, [40, 41])
  cfg = api.load(ours).cfg
  assert (cfg.eos_id, cfg.extra_eos_ids, cfg.eos_ids) == (2, (40, 41), (2, 40, 41))
  # Back to HF: both files list every end id, and transformers' generation reads them.
  export_hf(ours, tmp_path / "back")
  for name in ("config.json", "generation_config.json"):
    assert json.loads((tmp_path / "back" / name).read_text())["eos_token_id"] == [2, 40, 41], name
  assert GenerationConfig.from_pretrained(tmp_path / "back").eos_token_id == [2, 40, 41]
  assert read_model_config(convert_hf(tmp_path / "back", tmp_path / "again")) == read_model_config(ours)


def test_eos_ids_of_both_files_are_merged_in_order(tmp_path):
  _, hf_dir = make_hf_llama(tmp_path)
  _set_eos(hf_dir, "config", [5, 40])
  _set_eos(hf_dir, "generation_config", [5, 41, 40, 2])
  ours = convert_hf(hf_dir, tmp_path / "ours")
  assert api.load(ours).cfg.eos_ids == (5, 40, 41, 2)  # config.json's first is eos_id (training's end)


@pytest.mark.parametrize("where", ["config", "generation_config"])
@pytest.mark.parametrize("value,message", [
    ([], "eos_token_id is an empty list"),
    ([2, "x"], "eos_token_id must be an int or a list of ints, found [2, 'x']"),
    ([2, 40.0], "eos_token_id must be an int or a list of ints, found [2, 40.0]"),
    ([2, True], "eos_token_id must be an int or a list of ints, found [2, True]"),
    ([2, 97], "eos_token_id 97 is outside the vocabulary [0, 97)"),
    (-1, "eos_token_id -1 is outside the vocabulary [0, 97)"),
])
def test_malformed_eos_token_id_is_named(tmp_path, where, value, message):
  import re

  _, hf_dir = make_hf_llama(tmp_path)
  _set_eos(hf_dir, where, value)
  out = tmp_path / "out"
  with pytest.raises(ConfigError, match=re.escape(f"{hf_dir / where}.json: {message}")):
    convert(hf_dir, out)
  assert not out.exists()


def test_bos_token_id_list_takes_its_first_id_and_is_checked():
  from hb_jax.convert.hf_config import model_config_from_hf

  base = {"model_type": "llama", "vocab_size": 97, "hidden_size": 16, "num_hidden_layers": 1,
          "num_attention_heads": 2, "intermediate_size": 32}
  assert model_config_from_hf({**base, "bos_token_id": [5, 6]}).bos_id == 5
  assert model_config_from_hf(base).bos_id == 1
  with pytest.raises(ConfigError, match=r"config.json: bos_token_id 97 is outside the vocabulary \[0, 97\)"):
    model_config_from_hf({**base, "bos_token_id": [97]})
  with pytest.raises(ConfigError, match=r"config.json: bos_token_id must be an int or a list of ints"):
    model_config_from_hf({**base, "bos_token_id": "1"})


def test_malformed_extra_eos_ids_in_model_json_are_named(tmp_path):
  _, hf_dir = make_hf_llama(tmp_path)
  ours = convert_hf(hf_dir, tmp_path / "ours")
  meta = json.loads((ours / "model.json").read_text())
  for value, message in [([97], r"expected token ids in \[0, 97\), found 97"), ("40", "must be a list"),
                         ([2], "exclude eos_id 2"), ([40, 40], "must be distinct")]:
    (ours / "model.json").write_text(json.dumps({**meta, "extra_eos_ids": value}))
    with pytest.raises(ConfigError, match=rf"ours/model.json: model.extra_eos_ids.*{message}"):
      api.load(ours)


def test_tokenizer_settings_travel_both_ways(tmp_path):
  """tokenizer_config.json, chat_template.jinja and generation_config.json's defaults go HF -> hb_jax -> HF;
  a replaced model's settings files do not linger."""
  import tokenizers
  from tokenizers.models import WordLevel
  from transformers import AutoTokenizer, GenerationConfig

  _, hf_dir = make_hf_llama(tmp_path)
  vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4}
  tokenizers.Tokenizer(WordLevel(vocab, unk_token="[UNK]")).save(str(hf_dir / "tokenizer.json"))
  template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}"
  (hf_dir / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True,
       "chat_template": "an older template"}))
  (hf_dir / "chat_template.jinja").write_text(template)
  gen = json.loads((hf_dir / "generation_config.json").read_text())
  (hf_dir / "generation_config.json").write_text(json.dumps({**gen, "do_sample": True, "temperature": 0.6}))
  ours = convert_hf(hf_dir, tmp_path / "ours")
  for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    assert (ours / name).read_bytes() == (hf_dir / name).read_bytes(), name
  tok = api.load(ours).tokenizer
  assert tok.chat_template == template and tok.add_bos
  assert tok.apply_chat_template([{"role": "user", "content": "a"}]) == "<user>a</s>"
  export_hf(ours, tmp_path / "back")
  back = tmp_path / "back"
  assert (back / "chat_template.jinja").read_text() == template
  assert AutoTokenizer.from_pretrained(back).chat_template == template
  gen_back = GenerationConfig.from_pretrained(back)
  assert (gen_back.temperature, gen_back.do_sample, gen_back.eos_token_id) == (0.6, True, 2)
  # Replaced by a model without a chat template file: the old file must not be loaded with the new model.
  (hf_dir / "chat_template.jinja").unlink()
  convert(hf_dir, ours, overwrite=True)
  assert not (ours / "chat_template.jinja").exists()
  assert api.load(ours).tokenizer.chat_template == "an older template"

"""GGUF import on files written here with the `gguf` package's writer (llama.cpp's own Python code), from random
tiny transformers models laid out as llama.cpp's converter lays them out (attn_q / attn_k rows permuted):
byte-level BPE and sentencepiece vocabularies, quantized and float tensors, LLaMA-3.1 RoPE factors, and the
errors for what cannot be converted."""
from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

from helpers import LLAMA31_SCALING, assert_logits_close, hf_logits, make_hf_llama, random_tokens  # noqa: E402

from hb_jax import api  # noqa: E402
from hb_jax import tokenizer as tk  # noqa: E402
from hb_jax.convert import ConversionError, convert  # noqa: E402
from hb_jax.convert.sources import rotate_half_to_interleaved  # noqa: E402
from hb_jax.data import prompts  # noqa: E402

Q = gguf.GGMLQuantizationType
# A model whose matrices all have rows of a multiple of 32 values, so Q8_0 / Q4_1 blocks fit.
TINY_Q = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2)
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Digits, and a number that is not an ASCII digit: '½' (\p{N}) shares its first UTF-8 byte with the symbols
# £ § © ® ± µ ¶ °, so BPE learns 'Ġ'+'Â' before 'Â'+'½'. Where a space meets '½', llama.cpp's 'smollm'
# splitting (\p{N} first: 'Ġ','Â½') and GPT-2's (' ½' one word: 'ĠÂ','½') differ.
WORDS = ("the quick brown fox jumps over a lazy dog while an assistant answers each question about web search "
         "results with care 2023 1999 3.14 Zürich £ § © ® ± µ ¶ ° ½ ½").split()


def _corpus(tmp_path) -> str:
  rng = random.Random(0)
  path = tmp_path / "corpus.txt"
  path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(2000)))
  return str(path)


def _gguf_name(hf_name: str) -> str:
  names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
  layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
           "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
           "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down"}
  if hf_name in names:
    return names[hf_name]
  m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf_name)
  return f"blk.{m.group(1)}.{layer[m.group(2)]}.weight"


def write_gguf(path, model, vocab: dict, *, qtype=None, extra=None, tensor_types=None, arch="llama"):
  """A GGUF file as llama.cpp's convert_hf_to_gguf.py writes a LLaMA model: metadata, vocabulary, tensors
  with attn_q / attn_k rows permuted to GGML's interleaved RoPE layout; matrices quantized to `qtype`,
  norms in F32. `tensor_types` overrides the type of named GGUF tensors (raw bytes for types the package
  cannot quantize); `extra` adds metadata (key -> value) or a tensor ('tensor:' + name -> array)."""
  c = model.config
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_rope_freq_base(c.rope_parameters["rope_theta"])
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
  w.add_vocab_size(c.vocab_size)
  w.add_tokenizer_model(vocab["model"])
  if "pre" in vocab:
    w.add_tokenizer_pre(vocab["pre"])
  w.add_token_list(vocab["tokens"])
  w.add_token_types(vocab["types"])
  if "scores" in vocab:
    w.add_token_scores(vocab["scores"])
  if "merges" in vocab:
    w.add_token_merges(vocab["merges"])
  w.add_bos_token_id(vocab["bos"])
  w.add_eos_token_id(vocab["eos"])
  if "unk" in vocab:
    w.add_unk_token_id(vocab["unk"])
  w.add_add_bos_token(vocab["add_bos"])
  if "chat_template" in vocab:
    w.add_chat_template(vocab["chat_template"])
  extra = dict(extra or {})
  for key, value in extra.items():
    if key.startswith("tensor:"):
      w.add_tensor(key[len("tensor:"):], value)
    elif isinstance(value, str):
      w.add_string(key, value)
    elif isinstance(value, float):
      w.add_float32(key, value)
    else:
      w.add_uint32(key, value)
  tied = c.tie_word_embeddings
  for name, t in model.state_dict().items():
    if tied and name == "lm_head.weight":
      continue
    arr = t.detach().float().numpy()
    if name.endswith("q_proj.weight"):
      arr = rotate_half_to_interleaved(arr, c.num_attention_heads)
    elif name.endswith("k_proj.weight"):
      arr = rotate_half_to_interleaved(arr, c.num_key_value_heads)
    gname = _gguf_name(name)
    kind = (tensor_types or {}).get(gname, qtype if arr.ndim == 2 else None)
    if kind is None:
      w.add_tensor(gname, np.ascontiguousarray(arr))
    elif kind in (Q.F16,):
      w.add_tensor(gname, arr.astype(np.float16))
    elif kind == Q.Q8_1:  # the package cannot quantize (nor dequantize) Q8_1: raw blocks of the right size
      block, size = gguf.GGML_QUANT_SIZES[kind]
      raw = np.random.default_rng(0).integers(0, 255, (arr.shape[0], arr.shape[1] // block * size), np.uint8)
      w.add_tensor(gname, raw, raw_dtype=kind)
    else:
      w.add_tensor(gname, gguf.quants.quantize(arr, kind), raw_dtype=kind)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


@pytest.fixture(scope="module")
def bpe_vocab(tmp_path_factory) -> dict:
  """A byte-level BPE trained here (SmolLM2-like: ChatML specials first, no BOS added), as GGUF fields."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers

  tmp = tmp_path_factory.mktemp("bpe")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)])
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train([_corpus(tmp)], trainer)
  spec = json.loads(tok.to_str())
  vocab = spec["model"]["vocab"]
  tokens = sorted(vocab, key=vocab.get)
  assert [vocab[t] for t in tokens] == list(range(len(tokens)))
  merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
  return dict(model="gpt2", pre="smollm", tokens=tokens, merges=merges, bos=1, eos=2, add_bos=False,
              types=[3 if t.startswith("<|") else 1 for t in tokens], chat_template=CHATML)


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
  """A LLaMA-style sentencepiece model trained here, and its vocabulary as GGUF fields."""
  tmp = tmp_path_factory.mktemp("spm")
  proc = tk.load_tokenizer(tk.train_sentencepiece([_corpus(tmp)], tmp / "spm", vocab_size=320))
  sp = proc._sp
  n = sp.get_piece_size()
  types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 5 if sp.is_unused(i)
           else 1 for i in range(n)]
  vocab = dict(model="llama", tokens=[sp.id_to_piece(i) for i in range(n)], scores=[sp.get_score(i) for i in range(n)],
               types=types, bos=1, eos=2, unk=0, add_bos=True,
               chat_template="{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}")
  return proc, vocab


def test_bpe_gguf_q8_matches_transformers_gguf_loader(tmp_path, bpe_vocab):
  from transformers import AutoModelForCausalLM

  model, _ = make_hf_llama(tmp_path, vocab_size=len(bpe_vocab["tokens"]), tie_word_embeddings=True, **TINY_Q)
  path = write_gguf(tmp_path / "tiny.gguf", model, bpe_vocab, qtype=Q.Q8_0,
                    tensor_types={"blk.1.ffn_down.weight": Q.Q4_1, "blk.0.attn_v.weight": Q.F16})
  convert(path, tmp_path / "ours")
  lm = api.load(tmp_path / "ours")
  assert lm.cfg.tie_word_embeddings and (lm.cfg.num_heads, lm.cfg.num_kv_heads, lm.cfg.head_dim) == (4, 2, 16)
  ref = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32).eval()
  tokens = random_tokens(lm.cfg.vocab_size, 2, 24)
  assert_logits_close(lm.logits(tokens), hf_logits(ref, tokens), rel=1e-5)
  # Quantization moved the weights (4-bit blocks by up to ~10% of a logit here), not the network: a scrambled
  # tensor would be off by the logits' whole scale.
  assert_logits_close(lm.logits(tokens), hf_logits(model, tokens), rel=0.2)
  meta = json.loads((tmp_path / "ours" / "model.json").read_text())
  assert meta["extra"]["source_dtype"] == "gguf F16 x1, F32 x5, Q4_1 x1, Q8_0 x13"


def test_bpe_tokenizer_splits_as_llama_cpp_and_keeps_the_settings(tmp_path, bpe_vocab):
  """'smollm' splitting (llama.cpp: \\p{N} isolated, then GPT-2's regex) equals the Digits + ByteLevel
  pre-tokenizer the vocabulary was trained with; the settings come from the GGUF metadata."""
  from tokenizers import Tokenizer, models, pre_tokenizers

  model, _ = make_hf_llama(tmp_path, vocab_size=len(bpe_vocab["tokens"]), **TINY_Q)
  convert(write_gguf(tmp_path / "tiny.gguf", model, bpe_vocab), tmp_path / "ours")
  tok = api.load(tmp_path / "ours").tokenizer
  ref = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(bpe_vocab["tokens"])},
                             merges=[tuple(m.split(" ")) for m in bpe_vocab["merges"]]))
  ref.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)])
  text = "the fox in 2023 ran 1999 times, 3.14 x 12345 at 20 °C; ½ a Zürich  quick\n\nbrown's dog"
  assert tok.encode(text) == [i for i in ref.encode(text).ids]
  assert [tok.id_to_piece(i) for i in tok.encode(" 2023 ½")] == ["Ġ", "2", "0", "2", "3", "Ġ", "Â½"]
  assert tok.decode(tok.encode(text)) == text
  # Specials are matched whole; BOS (<|im_start|>) is not added, and not doubled by the template.
  assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)
  text = prompts.chat_style(tok).wrap("Hi 42")
  assert text == "<|im_start|>user\nHi 42<|im_end|>\n<|im_start|>assistant\n"
  ids = tok.encode(text, bos=True)
  assert ids[0] == 1 and ids.count(1) == 2 and ids[1] != 1
  config = json.loads((tmp_path / "ours" / "tokenizer_config.json").read_text())
  assert (config["bos_token"], config["eos_token"], config["chat_template"]) == ("<|im_start|>", "<|im_end|>", CHATML)
  # A folder without tokenizer_config.json (as converted by an earlier version) still loads: ids from model.json.
  (tmp_path / "ours" / "tokenizer_config.json").unlink()
  again = api.load(tmp_path / "ours").tokenizer
  assert (again.bos_id, again.eos_id, again.chat_template) == (1, 2, None)


def test_sentencepiece_gguf_rebuilds_tokenizer_model(tmp_path, spm):
  """LLaMA-1/2 GGUFs (tokenizer.ggml.model 'llama'): tokenizer.model is rebuilt from pieces, scores and types
  and encodes exactly as the sentencepiece model they came from; weights in F32 match the original model,
  with an untied head."""
  original, vocab = spm
  model, _ = make_hf_llama(tmp_path, vocab_size=len(vocab["tokens"]), **TINY_Q)
  convert(write_gguf(tmp_path / "llama2.gguf", model, vocab), tmp_path / "ours")
  lm = api.load(tmp_path / "ours")
  tok = lm.tokenizer
  assert isinstance(tok, tk.SentencePieceTokenizer) and not lm.cfg.tie_word_embeddings
  assert [tok.id_to_piece(i) for i in range(tok.vocab_size)] == vocab["tokens"]
  for text in ["the quick brown fox", "  two  spaces, Zürich 2023 東京 🙂\nnew line", "Score: 5", ""]:
    assert tok.encode(text, bos=True, eos=True) == original.encode(text, bos=True, eos=True), text
    assert tok.decode(tok.encode(text)) == original.decode(original.encode(text))
  assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, True)
  assert prompts.chat_style(tok).wrap("Hi") == "[INST] Hi [/INST]"
  tokens = random_tokens(lm.cfg.vocab_size, 2, 20)
  assert_logits_close(lm.logits(tokens), hf_logits(model, tokens), rel=1e-5)


def test_llama31_rope_factors_become_the_scaling(tmp_path, spm):
  """LLaMA-3.1 GGUFs store RoPE scaling as rope_freqs.weight (convert_hf_to_gguf.py's factors); read back into
  RopeScaling, the logits match the original model. Other factors are refused by name."""
  from hb_jax.config import RopeScaling
  from hb_jax.convert.gguf_source import llama3_rope_factors

  _, vocab = spm
  model, _ = make_hf_llama(tmp_path, vocab_size=len(vocab["tokens"]), rope_theta=5e5, rope_scaling=LLAMA31_SCALING,
                           **TINY_Q)
  s = LLAMA31_SCALING
  factors = llama3_rope_factors(5e5, 16, RopeScaling(s["factor"], s["low_freq_factor"], s["high_freq_factor"],
                                                     s["original_max_position_embeddings"]))
  assert factors.min() == 1.0 and factors.max() == 8.0  # the test's shapes reach both ends of the scaling
  extra = {"tensor:rope_freqs.weight": factors.astype(np.float32),
           "llama.rope.scaling.original_context_length": s["original_max_position_embeddings"]}
  convert(write_gguf(tmp_path / "l31.gguf", model, vocab, extra=extra), tmp_path / "ours")
  lm = api.load(tmp_path / "ours")
  assert lm.cfg.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 256)
  tokens = random_tokens(lm.cfg.vocab_size, 2, 40)
  assert_logits_close(lm.logits(tokens), hf_logits(model, tokens), rel=1e-5)
  extra["tensor:rope_freqs.weight"] = (factors * 1.5).astype(np.float32)
  with pytest.raises(ConversionError, match="rope_freqs.weight holds RoPE factors that are not LLaMA-3.1's"):
    convert(write_gguf(tmp_path / "bad.gguf", model, vocab, extra=extra), tmp_path / "bad")


def test_unsupported_tensor_types_and_architectures_are_named(tmp_path, bpe_vocab):
  model, _ = make_hf_llama(tmp_path, vocab_size=len(bpe_vocab["tokens"]), **TINY_Q)
  q81 = write_gguf(tmp_path / "q81.gguf", model, bpe_vocab, tensor_types={"blk.0.attn_q.weight": Q.Q8_1})
  with pytest.raises(ConversionError, match=r"q81.gguf: tensor types the gguf package \([0-9.]+\) cannot "
                                            r"dequantize into weights: Q8_1: blk.0.attn_q.weight"):
    convert(q81, tmp_path / "out")
  qwen = write_gguf(tmp_path / "qwen.gguf", model, bpe_vocab, arch="qwen2")
  with pytest.raises(ConversionError, match="general.architecture is 'qwen2'; only 'llama'"):
    convert(qwen, tmp_path / "out")
  vocab = dict(bpe_vocab, pre="qwen2")
  with pytest.raises(ConversionError, match="tokenizer.ggml.pre 'qwen2' is not supported"):
    convert(write_gguf(tmp_path / "pre.gguf", model, vocab), tmp_path / "out")
  moe = write_gguf(tmp_path / "moe.gguf", model, bpe_vocab, extra={"llama.expert_count": 8})
  with pytest.raises(ConversionError, match="llama.expert_count = 8 is not supported"):
    convert(moe, tmp_path / "out")
  (tmp_path / "not.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
  with pytest.raises(ConversionError, match="not.gguf: unreadable GGUF file"):
    convert(tmp_path / "not.gguf", tmp_path / "out")
  (tmp_path / "text.bin").write_text("hello")
  with pytest.raises(ConversionError, match="is a file but not a GGUF file"):
    convert(tmp_path / "text.bin", tmp_path / "out")
  assert not (tmp_path / "out").exists()

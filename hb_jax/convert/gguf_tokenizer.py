"""A GGUF file's vocabulary -> the tokenizer files of a model folder, splitting text as llama.cpp does.

`tokenizer.ggml.model` says which tokenizer llama.cpp runs:
  - "gpt2": byte-level BPE (LLaMA-3, SmolLM2, ...) -> `tokenizer.json`. The vocabulary and merges are
    copied as they are; the pre-tokenizer is the list of regular expressions llama.cpp applies, in order,
    for the file's `tokenizer.ggml.pre` type (`llm_tokenizer_bpe` in llama.cpp's src/llama-vocab.cpp), each an
    isolating `Split`, then the byte-level map. SmolLM2 ('smollm') thus splits every digit on its own, as its
    original tokenizer.json (Digits(individual_digits) + ByteLevel) and llama.cpp do.
  - "llama": sentencepiece BPE with scores (LLaMA 1/2) -> `tokenizer.model`, the sentencepiece model proto
    rebuilt from the pieces, scores and types (llama.cpp's SPM tokenizer merges by the same scores).
Beside it, `tokenizer_config.json` (special tokens, add_bos_token, the chat template) and
`generation_config.json` (the end ids), under their Hugging Face names.
"""
from __future__ import annotations

import dataclasses
import json
import struct

from etils import epath

from hb_jax.config import ModelConfig
from hb_jax.convert.gguf_source import field_value as _field
from hb_jax.convert.sources import ConversionError

# llama.cpp token types (llama_token_type), the same numbering as sentencepiece's piece types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?"
           r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> llama.cpp's regex_exprs for that type (llama-vocab.cpp), and whether llama.cpp ignores
# merges for words already in the vocabulary (LLaMA-3). Types not listed here are refused by name.
PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool]] = {
    "default": ((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"), False),
    "gpt-2": ((_GPT2,), False),
    "llama3": ((_LLAMA3,), True),
    "llama-v3": ((_LLAMA3,), True),
    "llama-bpe": ((_LLAMA3,), True),
    "smollm": ((r"\p{N}", _GPT2), False),
    "starcoder": ((r"\p{N}", _GPT2), False),
    "refact": ((r"\p{N}", _GPT2), False),
    "codeshell": ((r"\p{N}", _GPT2), False),
}


@dataclasses.dataclass(frozen=True)
class TokenizerFiles:
  tokenizer_file: epath.Path
  settings_files: list[epath.Path]


def write_tokenizer_files(reader, out_dir: epath.Path, cfg: ModelConfig, where: str) -> TokenizerFiles:
  """Writes the tokenizer file and its settings rebuilt from the GGUF metadata into out_dir."""
  model = _field(reader, "tokenizer.ggml.model")
  if model is None:
    raise ConversionError(f"{where}: no tokenizer.ggml.model in the metadata; the file holds no vocabulary")
  tokens = _field(reader, "tokenizer.ggml.tokens")
  if not tokens:
    raise ConversionError(f"{where}: tokenizer.ggml.tokens is missing or empty")
  types = _field(reader, "tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
  if len(types) != len(tokens):
    raise ConversionError(f"{where}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
  if len(tokens) > cfg.vocab_size:
    raise ConversionError(f"{where}: {len(tokens)} tokens but token_embd.weight has {cfg.vocab_size} rows")
  ids = {k: _field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}
  for k, i in ids.items():
    if i is not None and not 0 <= int(i) < len(tokens):
      raise ConversionError(f"{where}: tokenizer.ggml.{k}_token_id {i} is outside the {len(tokens)} tokens")
  if model == "gpt2":
    add_bos_default = _field(reader, "tokenizer.ggml.pre", "default") in ("llama3", "llama-v3", "llama-bpe")
    tokenizer_file = out_dir / "tokenizer.json"
    tokenizer_file.write_text(_bpe_tokenizer_json(reader, tokens, types, where))
    tokenizer_class = "PreTrainedTokenizerFast"
  elif model == "llama":
    add_bos_default = True
    tokenizer_file = out_dir / "tokenizer.model"
    tokenizer_file.write_bytes(_sentencepiece_model(reader, tokens, types, ids, where))
    tokenizer_class = "LlamaTokenizer"
  else:
    raise ConversionError(f"{where}: tokenizer.ggml.model {model!r} is not supported (expected 'gpt2' for "
                          "byte-level BPE or 'llama' for sentencepiece)")
  add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", add_bos_default))
  add_eos = bool(_field(reader, "tokenizer.ggml.add_eos_token", False))
  name = lambda i: None if i is None else tokens[int(i)]
  config = {
      "tokenizer_class": tokenizer_class,
      "bos_token": name(ids["bos"]), "eos_token": name(ids["eos"]), "unk_token": name(ids["unknown"]),
      "pad_token": name(ids["padding"]), "add_bos_token": add_bos, "add_eos_token": add_eos,
      "clean_up_tokenization_spaces": False, "model_max_length": cfg.max_position_embeddings,
  }
  template = _field(reader, "tokenizer.chat_template")
  if template:
    config["chat_template"] = template
  config = {k: v for k, v in config.items() if v is not None}
  settings = [out_dir / "tokenizer_config.json", out_dir / "generation_config.json"]
  settings[0].write_text(json.dumps(config, indent=2, ensure_ascii=False))
  eos = list(cfg.eos_ids)
  settings[1].write_text(json.dumps({"bos_token_id": cfg.bos_id, "eos_token_id": eos if len(eos) > 1 else eos[0]},
                                    indent=2))
  return TokenizerFiles(tokenizer_file, settings)


# ---------------------------------------------------------------------------------------------- byte-level BPE
def _bpe_tokenizer_json(reader, tokens: list[str], types: list[int], where: str) -> str:
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

  pre = _field(reader, "tokenizer.ggml.pre", "default")
  if pre not in PRE_TOKENIZERS:
    raise ConversionError(f"{where}: tokenizer.ggml.pre {pre!r} is not supported (known: "
                          f"{', '.join(sorted(PRE_TOKENIZERS))}); its text splitting would differ from llama.cpp's")
  regexes, ignore_merges = PRE_TOKENIZERS[pre]
  merges = []
  for k, m in enumerate(_field(reader, "tokenizer.ggml.merges") or []):
    left, sep, right = m.partition(" ")
    if not sep or not left or not right or " " in right:
      raise ConversionError(f"{where}: tokenizer.ggml.merges[{k}] = {m!r}; expected two tokens split by one space")
    merges.append((left, right))
  vocab: dict[str, int] = {}
  for i, t in enumerate(tokens):
    vocab.setdefault(t, i)  # a repeated string keeps its first id, as llama.cpp's text_to_token does
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges, fuse_unk=False,
                             byte_fallback=False))
  tok.pre_tokenizer = pre_tokenizers.Sequence(
      [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
      + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  # Control and user-defined tokens are matched whole in the text before splitting (llama.cpp's
  # tokenizer_st_partition); control tokens are special (dropped when decoding for display).
  tok.add_tokens([AddedToken(tokens[i], special=types[i] == CONTROL, normalized=False)
                  for i in range(len(tokens)) if types[i] in (CONTROL, USER_DEFINED)])
  return tok.to_str()


# ---------------------------------------------------------------------------------------------- sentencepiece
def _sentencepiece_model(reader, tokens: list[str], types: list[int], ids: dict, where: str) -> bytes:
  """A sentencepiece ModelProto (BPE, identity normalizer), written field by field in protobuf's wire format:
  the generated module sentencepiece ships needs a newer protobuf runtime than jax's stack pins."""
  scores = _field(reader, "tokenizer.ggml.scores")
  if scores is None or len(scores) != len(tokens):
    raise ConversionError(f"{where}: tokenizer.ggml.scores must hold one score per token for a sentencepiece "
                          f"vocabulary, found {None if scores is None else len(scores)} for {len(tokens)} tokens")
  bad = sorted({t for t in types if t not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)})
  if bad:
    raise ConversionError(f"{where}: tokenizer.ggml.token_type holds unknown types {bad}")
  out = bytearray()
  for piece, score, kind in zip(tokens, scores, types):
    out += _message(1, _string(1, piece) + _float(2, float(score)) + _varint_field(3, int(kind)))
  unk = ids["unknown"] if ids["unknown"] is not None else (types.index(UNKNOWN) if UNKNOWN in types else 0)
  trainer = bytearray()
  trainer += _varint_field(3, 2)  # model_type BPE
  trainer += _varint_field(4, len(tokens))
  trainer += _varint_field(35, int(BYTE in types))  # byte_fallback
  for field, key, piece_field in ((40, None, 45), (41, "bos", 46), (42, "eos", 47)):
    i = unk if key is None else ids[key]
    trainer += _varint_field(field, -1 if i is None else int(i))
    if i is not None:
      trainer += _string(piece_field, tokens[int(i)])
  trainer += _varint_field(43, -1)  # pad_id: LLaMA's sentencepiece has no pad piece
  out += _message(2, bytes(trainer))
  normalizer = _string(1, "identity")
  normalizer += _varint_field(3, int(bool(_field(reader, "tokenizer.ggml.add_space_prefix", True))))
  normalizer += _varint_field(4, int(bool(_field(reader, "tokenizer.ggml.remove_extra_whitespaces", False))))
  normalizer += _varint_field(5, 1)  # escape_whitespaces: spaces become U+2581, as in every LLaMA vocabulary
  charsmap = _field(reader, "tokenizer.ggml.precompiled_charsmap")
  if charsmap:
    normalizer += _bytes(2, bytes(charsmap))
  out += _message(3, normalizer)
  _check_loads(bytes(out), where)
  return bytes(out)


def _check_loads(proto: bytes, where: str) -> None:
  import sentencepiece as spm

  sp = spm.SentencePieceProcessor()
  try:
    sp.LoadFromSerializedProto(proto)
  except Exception as e:  # sentencepiece raises RuntimeError with its own message
    raise ConversionError(f"{where}: the rebuilt sentencepiece model does not load: {e}") from e


def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1  # negative int32 values are written as 64-bit two's complement (protobuf's rule)
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _varint_field(field: int, value: int) -> bytes:
  return _varint(field << 3) + _varint(value)


def _bytes(field: int, data: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(data)) + data


def _string(field: int, text: str) -> bytes:
  return _bytes(field, text.encode("utf-8"))


def _message(field: int, body: bytes) -> bytes:
  return _bytes(field, body)


def _float(field: int, value: float) -> bytes:
  return _varint(field << 3 | 5) + struct.pack("<f", value)

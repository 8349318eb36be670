"""Tokenizers with LLaMA's conventions behind one small interface.

Two backends: sentencepiece (`tokenizer.model`; LLaMA 1/2: BOS id 1, EOS id 2, no pad piece, byte
fallback) and a Hugging Face `tokenizer.json` read with the `tokenizers` library (LLaMA-3 BPE:
`<|begin_of_text|>`/`<|end_of_text|>`). Both read their file through etils.epath, so `gs://` works.

  tok = load_tokenizer(model_dir)          # or the file itself; None for a folder with neither file
  ids = tok.encode(text, bos=True)         # BOS is the caller's choice; EOS too
  tok.decode(ids); tok.bos_id; tok.eos_id; tok.vocab_size; tok.id_to_piece(i); tok.file_name
  tok.save(model_dir)                      # copies the tokenizer file into a model folder
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from etils import epath

SENTENCEPIECE_FILE = "tokenizer.model"
HF_JSON_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"

# Special-token names tried in order when tokenizer_config.json does not name them.
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>")
_EOS_NAMES = ("<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>")


class Tokenizer:
  """The interface; subclasses set `bos_id`, `eos_id`, `vocab_size`, `file_name` and `_data`."""
  bos_id: int
  eos_id: int
  vocab_size: int
  file_name: str
  _data: bytes

  def _encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def decode(self, ids: Sequence[int]) -> str:
    raise NotImplementedError

  def id_to_piece(self, i: int) -> str:
    raise NotImplementedError

  def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
    ids = self._encode(text)
    return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

  def save(self, directory: epath.PathLike) -> epath.Path:
    """Writes the tokenizer file into a model folder; returns its path."""
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / self.file_name
    path.write_bytes(self._data)
    return path


class SentencePieceTokenizer(Tokenizer):
  file_name = SENTENCEPIECE_FILE

  def __init__(self, model_proto: bytes, source: str = "<bytes>"):
    import sentencepiece as spm
    self._data = model_proto
    self._sp = spm.SentencePieceProcessor()
    self._sp.LoadFromSerializedProto(model_proto)
    self.source = source
    self.bos_id = self._sp.bos_id()
    self.eos_id = self._sp.eos_id()
    self.vocab_size = self._sp.get_piece_size()
    if self.bos_id < 0 or self.eos_id < 0:
      raise ValueError(f"{source}: expected BOS and EOS pieces, found bos_id={self.bos_id} eos_id={self.eos_id}")

  def _encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))


class HFJsonTokenizer(Tokenizer):
  """A `tokenizer.json` (LLaMA-3 style BPE). BOS/EOS come from tokenizer_config.json beside it when
  present, else from the first known special-token name the vocabulary holds."""
  file_name = HF_JSON_FILE

  def __init__(self, json_text: str, config: dict | None = None, source: str = "<text>"):
    import tokenizers
    self._data = json_text.encode("utf-8")
    self._tok = tokenizers.Tokenizer.from_str(json_text)
    self.source = source
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    config = config or {}
    self.bos_id = self._special_id(config.get("bos_token"), _BOS_NAMES, "BOS")
    self.eos_id = self._special_id(config.get("eos_token"), _EOS_NAMES, "EOS")

  def _special_id(self, configured, names: Sequence[str], what: str) -> int:
    if isinstance(configured, dict):  # {"content": "<s>", ...} in older configs
      configured = configured.get("content")
    for name in ([configured] if configured else []) + list(names):
      i = self._tok.token_to_id(name)
      if i is not None:
        return i
    raise ValueError(f"{self.source}: expected a {what} token (one of {list(names)}), found none in the vocabulary")

  def _encode(self, text: str) -> list[int]:
    # Specials are added by encode(bos=, eos=), never by the post-processor, as for sentencepiece.
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def id_to_piece(self, i: int) -> str:
    piece = self._tok.id_to_token(int(i))
    if piece is None:
      raise IndexError(f"{self.source}: expected a token id below {self.vocab_size}, found {i}")
    return piece


def load_tokenizer(path: epath.PathLike) -> Tokenizer | None:
  """A model folder holding tokenizer.model or tokenizer.json (sentencepiece preferred), or the file.

  Returns None for a folder with neither file; raises FileNotFoundError for a missing path.
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"load_tokenizer: expected a model folder or tokenizer file, found nothing at {path}")
  if path.is_dir():
    for name in (SENTENCEPIECE_FILE, HF_JSON_FILE):
      if (path / name).exists():
        return load_tokenizer(path / name)
    return None
  if path.name.endswith(".json"):
    config_path = path.parent / HF_CONFIG_FILE
    config = json.loads(config_path.read_text()) if config_path.exists() else None
    return HFJsonTokenizer(path.read_text(), config=config, source=os.fspath(path))
  return SentencePieceTokenizer(path.read_bytes(), source=os.fspath(path))


def train_sentencepiece(inputs: Sequence[str], output_dir: epath.PathLike, vocab_size: int,
                        max_sentences: int = 2_000_000, seed_sentencepiece_size: int = 1_000_000) -> epath.Path:
  """Trains a small BPE sentencepiece model with LLaMA's settings; writes `output_dir/tokenizer.model`.

  LLaMA's trainer spec: BPE, byte_fallback, split_digits, unk=0 bos=1 eos=2 pad=-1, identity
  normalization, dummy prefix, extra whitespace kept. `required_chars` makes every digit (and so the
  rating digits "1".."5") a piece of its own even if the corpus lacks one.
  """
  import io
  import tempfile

  import sentencepiece as spm
  model = io.BytesIO()
  with tempfile.TemporaryDirectory(prefix="hb_jax_spm_") as staging:
    local = [_local_copy(path, staging, i) for i, path in enumerate(inputs)]
    spm.SentencePieceTrainer.train(
      input=local, model_writer=model, vocab_size=vocab_size, model_type="bpe",
      byte_fallback=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
      normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
      allow_whitespace_only_pieces=True, required_chars="0123456789", character_coverage=0.99995,
      hard_vocab_limit=False, input_sentence_size=max_sentences, shuffle_input_sentence=True,
      seed_sentencepiece_size=seed_sentencepiece_size, max_sentence_length=16384,
      num_threads=os.cpu_count() or 1, minloglevel=2)
  tok = SentencePieceTokenizer(model.getvalue(), source="<trained>")
  return tok.save(output_dir)


def _local_copy(path: str | os.PathLike, staging: str, index: int) -> str:
  """The path itself when local (so the trainer reads the very file); else a copy in `staging`, since
  sentencepiece opens its inputs with C++ file I/O, which knows nothing of gs:// or s3://."""
  import shutil
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"train_sentencepiece: input file not found: {path}")
  if "://" not in os.fspath(path):
    return os.fspath(path)
  local = os.path.join(staging, f"{index:04d}-{epath.Path(path).name}")
  with epath.Path(path).open("rb") as src, open(local, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 22)
  return local

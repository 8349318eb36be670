"""Tokenizers behind one small interface, with the tokenizer's own settings (BOS/EOS, chat template).

Two backends: sentencepiece (`tokenizer.model`; LLaMA 1/2: BOS id 1, EOS id 2, no pad piece, byte
fallback) and a Hugging Face `tokenizer.json` read with the `tokenizers` library (LLaMA-3 BPE, SmolLM2, ...).
Both read their file through etils.epath, so `gs://` works. The settings come from the files beside the
tokenizer, as transformers reads them: `tokenizer_config.json` (bos_token, eos_token, add_bos_token,
chat_template), `chat_template.jinja` / `chat_template.json`, and the model's own ids in `model.json`.

  tok = load_tokenizer(model_dir)          # or the file itself; None for a folder with neither file
  ids = tok.encode(text, bos=True)         # bos=True: a sequence starts here (BOS as the settings say); EOS too
  tok.decode(ids); tok.bos_id; tok.eos_id; tok.add_bos; tok.vocab_size; tok.id_to_piece(i); tok.file_name
  tok.chat_template; tok.apply_chat_template(messages)   # rendered as transformers renders it
  tok.save(model_dir)                      # copies the tokenizer file (not its settings) into a folder
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from etils import epath

SENTENCEPIECE_FILE = "tokenizer.model"
HF_JSON_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_JINJA = "chat_template.jinja"
CHAT_TEMPLATE_JSON = "chat_template.json"
MODEL_JSON = "model.json"


class Tokenizer:
  """The interface; subclasses set `bos_id`, `eos_id`, `vocab_size`, `file_name` and `_data`.

  `add_bos`: whether a sequence starts with BOS (the tokenizer's `add_bos_token`; LLaMA: yes, SmolLM2:
  no, its chat template writes its own start token). `chat_template`: the model's Jinja chat template or
  None. `special_tokens`: the names a chat template reads (bos_token, eos_token, ...).
  """
  bos_id: int
  eos_id: int
  vocab_size: int
  file_name: str
  add_bos: bool = True
  chat_template: str | None = None
  special_tokens: dict[str, str]
  _data: bytes

  def _encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def decode(self, ids: Sequence[int]) -> str:
    raise NotImplementedError

  def id_to_piece(self, i: int) -> str:
    raise NotImplementedError

  def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
    """Token ids of `text`. bos=True marks the start of a sequence: BOS is prepended when the tokenizer's
    settings add one and the text does not already start with it (a chat template that writes the start
    token itself), so a start token is never doubled. eos=True appends EOS."""
    ids = self._encode(text)
    if bos and self.add_bos and ids[:1] != [self.bos_id]:
      ids = [self.bos_id] + ids
    return ids + ([self.eos_id] if eos else [])

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                          **kwargs) -> str:
    """The conversation as the model's chat template writes it (text; encode it with bos=True)."""
    from hb_jax.data import chat_template

    if not self.chat_template:
      raise ValueError(f"{self.source}: this tokenizer has no chat template (expected one in {HF_CONFIG_FILE} "
                       f"or {CHAT_TEMPLATE_JINJA} beside it)")
    return chat_template.render(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                                **{**self.special_tokens, **kwargs})

  def save(self, directory: epath.PathLike) -> epath.Path:
    """Writes the tokenizer file into a model folder; returns its path."""
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / self.file_name
    path.write_bytes(self._data)
    return path

  def _apply_settings(self, settings: Mapping[str, Any] | None) -> None:
    settings = settings or {}
    if settings.get("add_bos_token") is not None:
      self.add_bos = bool(settings["add_bos_token"])
    self.chat_template = settings.get("chat_template") or None
    names = {"bos_token": self.bos_id, "eos_token": self.eos_id}
    self.special_tokens = {k: self.id_to_piece(i) for k, i in names.items()}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
      name = _token_name(settings.get(key))
      if name:
        self.special_tokens[key] = name


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model: BOS/EOS are its own pieces; a sequence starts with BOS unless the settings'
  add_bos_token says otherwise."""
  file_name = SENTENCEPIECE_FILE

  def __init__(self, model_proto: bytes, source: str = "<bytes>", settings: Mapping[str, Any] | None = None):
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
    self._apply_settings(settings)

  def _encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))


class HFJsonTokenizer(Tokenizer):
  """A `tokenizer.json`. BOS/EOS are the tokens `tokenizer_config.json` names (bos_token / eos_token), else
  the ids of the model's own config (`model.json` bos_id / eos_id); never guessed from token names.
  A sequence starts with BOS when the config's add_bos_token says so, else when the file's post-processor
  adds it (transformers' rule)."""
  file_name = HF_JSON_FILE

  def __init__(self, json_text: str, config: Mapping[str, Any] | None = None, source: str = "<text>",
               model_ids: Mapping[str, int | None] | None = None):
    import tokenizers
    self._data = json_text.encode("utf-8")
    self._tok = tokenizers.Tokenizer.from_str(json_text)
    self.source = source
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    config, model_ids = dict(config or {}), dict(model_ids or {})
    self.bos_id = self._special_id(config.get("bos_token"), model_ids.get("bos_id"), "bos_token", "bos_id")
    self.eos_id = self._special_id(config.get("eos_token"), model_ids.get("eos_id"), "eos_token", "eos_id")
    self.add_bos = self._post_processor_adds_bos()
    self._apply_settings(config)

  def _special_id(self, configured, model_id, key: str, model_key: str) -> int:
    name = _token_name(configured)
    if name:
      i = self._tok.token_to_id(name)
      if i is None:
        raise ValueError(f"{self.source}: {HF_CONFIG_FILE} names {key} {name!r}, which is not in the vocabulary")
      return i
    if model_id is not None:
      if isinstance(model_id, bool) or not isinstance(model_id, int) or not 0 <= model_id < self.vocab_size:
        raise ValueError(f"{self.source}: {MODEL_JSON} {model_key} must be a token id below {self.vocab_size}, "
                         f"found {model_id!r}")
      return model_id
    raise ValueError(f"{self.source}: no {key}: expected {key} in {HF_CONFIG_FILE} or {model_key} in {MODEL_JSON} "
                     "beside the tokenizer")

  def _post_processor_adds_bos(self) -> bool:
    with_specials = self._tok.encode("a", add_special_tokens=True).ids
    plain = self._tok.encode("a", add_special_tokens=False).ids
    return with_specials[:1] == [self.bos_id] and len(with_specials) > len(plain)

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


def _token_name(value) -> str | None:
  """A special token as tokenizer_config.json writes it: a string, or {"content": ...} in older files."""
  if isinstance(value, Mapping):
    value = value.get("content")
  return value if isinstance(value, str) and value else None


def _read_json(path: epath.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON: {e}") from e


def read_settings(folder: epath.PathLike) -> dict[str, Any]:
  """The tokenizer's settings in `folder` as one dict: special_tokens_map.json, then tokenizer_config.json
  over it, then the chat template from chat_template.json or chat_template.jinja (transformers' order of
  precedence: the separate files win). A template list (named templates) yields its 'default' one."""
  folder = epath.Path(folder)
  settings: dict[str, Any] = {}
  for name in (SPECIAL_TOKENS_MAP_FILE, HF_CONFIG_FILE):
    path = folder / name
    if path.exists():
      value = _read_json(path)
      if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(value).__name__}")
      settings.update(value)
  if (folder / CHAT_TEMPLATE_JSON).exists():
    value = _read_json(folder / CHAT_TEMPLATE_JSON)
    settings["chat_template"] = value.get("chat_template") if isinstance(value, dict) else None
  if (folder / CHAT_TEMPLATE_JINJA).exists():
    settings["chat_template"] = (folder / CHAT_TEMPLATE_JINJA).read_text()
  template = settings.get("chat_template")
  if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
    settings["chat_template"] = named.get("default")
  elif template is not None and not isinstance(template, str):
    raise ValueError(f"{folder}: chat_template must be a string or a list of named templates, found "
                     f"{type(template).__name__}")
  return settings


def _model_ids(folder: epath.Path) -> dict[str, int | None]:
  """bos_id / eos_id of the model.json beside a tokenizer (a model folder), if there is one."""
  path = folder / MODEL_JSON
  if not path.exists():
    return {}
  data = _read_json(path)
  return {k: data.get(k) for k in ("bos_id", "eos_id")} if isinstance(data, dict) else {}


def load_tokenizer(path: epath.PathLike) -> Tokenizer | None:
  """A model folder holding tokenizer.model or tokenizer.json (sentencepiece preferred), or the file; its
  settings are read from the files beside it.

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
  settings = read_settings(path.parent)
  if path.name.endswith(".json"):
    return HFJsonTokenizer(path.read_text(), config=settings, source=os.fspath(path),
                           model_ids=_model_ids(path.parent))
  return SentencePieceTokenizer(path.read_bytes(), source=os.fspath(path), settings=settings)


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

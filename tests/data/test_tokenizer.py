"""Tokenizer: LLaMA conventions on a sentencepiece model we train, and the tokenizer.json backend."""
import json
import os
import random
import subprocess
import sys
import pathlib

import pytest

from hb_jax import tokenizer as tk
from hb_jax.data import prompts

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORDS = ("the quick brown fox jumps over a lazy dog while an assistant answers each question about web "
         "search results with care and knowledge score rating answer").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "corpus.txt"
  rng = random.Random(0)
  lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) for _ in range(3000)]
  path.write_text("\n".join(lines) + "\n")
  return path


@pytest.fixture(scope="module")
def spm_dir(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("spm")
  # Through the command-line tool, as the demo uses it.
  subprocess.run([sys.executable, str(ROOT / "tools" / "train_tokenizer.py"), "--input", str(corpus),
                  "--output", str(out), "--vocab_size", "400"], check=True, capture_output=True)
  return out


def test_sentencepiece_llama_conventions(spm_dir):
  tok = tk.load_tokenizer(spm_dir)
  assert isinstance(tok, tk.SentencePieceTokenizer) and tok.file_name == "tokenizer.model"
  assert (tok.bos_id, tok.eos_id) == (1, 2)
  assert tok.id_to_piece(0) == "<unk>" and tok.id_to_piece(1) == "<s>" and tok.id_to_piece(2) == "</s>"
  assert 256 < tok.vocab_size <= 400 + 300
  ids = tok.encode("the fox", bos=True, eos=True)
  assert ids[0] == 1 and ids[-1] == 2 and 1 not in ids[1:-1]
  assert tok.encode("the fox") == ids[1:-1]
  # Byte fallback: unseen characters survive a round trip instead of becoming <unk>.
  text = "Zürich 東京 🙂 fox 2023"
  assert tok.decode(tok.encode(text)) == text
  assert 0 not in tok.encode(text)
  # split_digits, and every rating digit a single piece.
  for d in "12345":
    assert [tok.id_to_piece(i) for i in tok.encode("x" + d)][-1] == d
  assert [tok.id_to_piece(i) for i in tok.encode("2023")][-4:] == ["2", "0", "2", "3"]


def test_rating_query_splits_digits(spm_dir):
  tok = tk.load_tokenizer(spm_dir)
  q = prompts.rating_query(tok, "Name a fox.", "The quick brown fox.")
  assert q.context[0] == tok.bos_id
  assert [tok.id_to_piece(i) for i in q.digit_ids] == list("12345")
  for d, i in zip("12345", q.digit_ids):
    full = tok.encode(prompts.rating_context("Name a fox.", "The quick brown fox.") + " " + d, bos=True)
    assert q.context + [i] == full


def test_load_tokenizer_paths(spm_dir, tmp_path):
  assert tk.load_tokenizer(tmp_path) is None
  with pytest.raises(FileNotFoundError):
    tk.load_tokenizer(tmp_path / "missing")
  tok = tk.load_tokenizer(spm_dir / "tokenizer.model")
  copied = tok.save(tmp_path / "model")
  assert copied.name == "tokenizer.model" and copied.read_bytes() == (spm_dir / "tokenizer.model").read_bytes()
  assert tk.load_tokenizer(tmp_path / "model").encode("fox") == tok.encode("fox")


@pytest.fixture(scope="module")
def bpe_dir(corpus, tmp_path_factory):
  """A LLaMA-3-style byte-level BPE tokenizer.json, trained here (nothing is downloaded)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train([str(corpus)], trainer)
  out = tmp_path_factory.mktemp("bpe")
  tok.save(str(out / "tokenizer.json"))
  return out


def _settings(folder, config=None, model_ids=None):
  """Writes (or removes) tokenizer_config.json and a model.json holding only ids beside a tokenizer."""
  for name, value in (("tokenizer_config.json", config), ("model.json", model_ids)):
    if value is None:
      (folder / name).unlink(missing_ok=True)
    else:
      (folder / name).write_text(json.dumps(value))


def test_hf_json_backend(bpe_dir):
  _settings(bpe_dir, {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": True})
  tok = tk.load_tokenizer(bpe_dir)
  assert isinstance(tok, tk.HFJsonTokenizer) and tok.file_name == "tokenizer.json"
  assert tok.id_to_piece(tok.bos_id) == "<|begin_of_text|>" and tok.id_to_piece(tok.eos_id) == "<|end_of_text|>"
  ids = tok.encode("the fox", bos=True, eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  assert tok.decode(ids) == "the fox"
  # A text that starts with BOS itself (a chat template writing it) does not get a second one.
  assert tok.encode("<|begin_of_text|>the fox", bos=True) == ids[:-1]
  text = "Zürich 東京 🙂 fox"
  assert tok.decode(tok.encode(text)) == text
  q = prompts.rating_query(tok, "Name a fox.", "The fox.")
  assert len(set(q.digit_ids)) == 5
  # tokenizer_config.json beside the file decides the EOS (LLaMA-3 instruct uses <|eot_id|>).
  _settings(bpe_dir, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})
  assert tk.load_tokenizer(bpe_dir).id_to_piece(tk.load_tokenizer(bpe_dir).eos_id) == "<|eot_id|>"
  _settings(bpe_dir)


def test_hf_json_ids_come_from_the_settings_never_from_token_names(bpe_dir):
  """BOS/EOS: tokenizer_config.json's names, else model.json's ids; a vocabulary holding <|begin_of_text|>
  is no reason to use it. BOS is added as add_bos_token says, else as the file's post-processor does."""
  try:
    with pytest.raises(ValueError, match="no bos_token: expected bos_token in tokenizer_config.json or bos_id in "
                                         "model.json"):
      tk.load_tokenizer(bpe_dir)
    _settings(bpe_dir, model_ids={"bos_id": 2, "eos_id": 1})  # a folder converted before the settings were kept
    tok = tk.load_tokenizer(bpe_dir)
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (2, 1, False)  # this file's post-processor adds nothing
    assert tok.encode("the fox", bos=True) == tok.encode("the fox")
    _settings(bpe_dir, {"add_bos_token": True}, model_ids={"bos_id": 2, "eos_id": 1})
    assert tk.load_tokenizer(bpe_dir).encode("the fox", bos=True)[0] == 2
    _settings(bpe_dir, {"bos_token": "<nope>"}, model_ids={"bos_id": 2, "eos_id": 1})
    with pytest.raises(ValueError, match="names bos_token '<nope>', which is not in the vocabulary"):
      tk.load_tokenizer(bpe_dir)
    _settings(bpe_dir, model_ids={"bos_id": 10**6, "eos_id": 1})
    with pytest.raises(ValueError, match="model.json bos_id must be a token id below"):
      tk.load_tokenizer(bpe_dir)
  finally:
    _settings(bpe_dir)


def test_sentencepiece_add_bos_token_and_chat_template(spm_dir, tmp_path):
  import shutil

  folder = tmp_path / "chat"
  shutil.copytree(spm_dir, folder)
  template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}" \
             "{% if add_generation_prompt %}<assistant>{% endif %}"
  (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False, "chat_template": "x"}))
  (folder / "chat_template.jinja").write_text(template)  # the separate file wins, as in transformers
  tok = tk.load_tokenizer(folder)
  assert tok.add_bos is False and tok.encode("the fox", bos=True) == tok.encode("the fox")
  assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<user>hi</s><assistant>"
  style = prompts.chat_style(tok)
  assert prompts.forward_prompt("hi", "", style) == "<user>hi</s><assistant>"
  assert prompts.chat_style(tk.load_tokenizer(spm_dir)) == prompts.DEFAULT_STYLE
  with pytest.raises(ValueError, match="has no chat template"):
    tk.load_tokenizer(spm_dir).apply_chat_template([{"role": "user", "content": "hi"}])


def test_sentencepiece_trains_from_an_object_store(corpus, tmp_path, monkeypatch):
  """sentencepiece opens its inputs with C++ file I/O: a gs:// input is copied to a local file first, and
  the model is the one the local file gives. A missing input is named."""
  import sentencepiece as spm
  from tests.helpers import fake_bucket

  local_model = tk.train_sentencepiece([str(corpus)], tmp_path / "local", vocab_size=300)
  bucket = fake_bucket(monkeypatch, tmp_path)
  remote = f"{bucket}/data/corpus.txt"
  tk.epath.Path(remote).parent.mkdir(parents=True)
  tk.epath.Path(remote).write_bytes(corpus.read_bytes())
  seen = []
  train = spm.SentencePieceTrainer.train

  def recording(**kwargs):
    seen.extend(kwargs["input"])
    return train(**kwargs)

  monkeypatch.setattr(spm.SentencePieceTrainer, "train", recording)
  out = tk.train_sentencepiece([remote], f"{bucket}/tok", vocab_size=300)
  assert os.fspath(out) == f"{bucket}/tok/tokenizer.model"
  ours, ref = tk.load_tokenizer(out), tk.load_tokenizer(local_model)  # the files differ in the input name only
  assert [ours.id_to_piece(i) for i in range(ours.vocab_size)] == [ref.id_to_piece(i) for i in range(ref.vocab_size)]
  assert len(seen) == 1 and "://" not in seen[0]
  with pytest.raises(FileNotFoundError, match=f"input file not found: {bucket}/data/missing.txt"):
    tk.train_sentencepiece([f"{bucket}/data/missing.txt"], tmp_path / "x", vocab_size=300)

"""GGUF files (llama.cpp's format) as a tensor source: LLaMA-architecture weights under Hugging Face names.

Read with the `gguf` package (llama.cpp's own Python reader), which memory-maps the file: each tensor is
dequantized (F16, BF16, Q4_0 ... Q8_0, K-quants, IQ-quants: whatever `gguf.dequantize` implements) only when
it is asked for, so conversion holds the converted weights plus a tensor in flight, as for the other formats.
llama.cpp's converter permutes the rows of attn_q / attn_k from HF's rotate-half RoPE layout to the
interleaved one GGML computes in (`LlamaModel.permute` in convert_hf_to_gguf.py, the same permutation as
Meta's checkpoints); it is undone here. The metadata (`llama.*` keys) becomes a ModelConfig; the vocabulary
becomes tokenizer files (hb_jax/convert/gguf_tokenizer.py). No torch on this path.
"""
from __future__ import annotations

import math
import re
import shutil
import tempfile

import numpy as np
from etils import epath

from hb_jax.config import ConfigError, ModelConfig, RopeScaling
from hb_jax.convert.sources import ConversionError, interleaved_to_rotate_half

# GGUF tensor name -> HF name (per layer: 'blk.{i}.X' -> 'model.layers.{i}.Y').
_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_LAYER = {"attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
          "attn_k.weight": "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
          "attn_output.weight": "self_attn.o_proj.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
          "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
          "ffn_down.weight": "mlp.down_proj.weight"}
# LLaMA-3.1/3.2 GGUFs carry their RoPE scaling as per-frequency factors (no parameters): read into the config.
_ROPE_FREQS = "rope_freqs.weight"
# Metadata that would change the network this LLaMA implementation computes.
_UNSUPPORTED_KEYS = ("expert_count", "attention.sliding_window", "attention.logit_softcapping",
                     "final_logit_softcapping", "attention.clamp_kqv")


def read_gguf(path):
  """A memory-mapped gguf.GGUFReader, or a ConversionError naming the file."""
  import gguf

  try:
    return gguf.GGUFReader(str(path), "r")
  except Exception as e:  # the reader raises ValueError/KeyError/struct errors for damaged or newer files
    raise ConversionError(f"{path}: unreadable GGUF file: {type(e).__name__}: {e}") from e


def field_value(reader, key: str, default=None):
  """A metadata value as Python (str, int, float, bool, or a list of them), or `default` when absent."""
  field = reader.fields.get(key)
  return default if field is None else field.contents()


class GGUFSource:
  """A LLaMA-architecture GGUF file (general.architecture 'llama'), presented under Hugging Face names."""

  def __init__(self, path):
    import gguf

    from hb_jax.convert import gguf_tokenizer

    self.path = epath.Path(path)
    self.where = str(self.path)
    self.reader = read_gguf(self.path)
    arch = field_value(self.reader, "general.architecture")
    if arch != "llama":
      raise ConversionError(f"{self.path}: general.architecture is {arch!r}; only 'llama' (LLaMA 1/2/3, Mistral, "
                            "SmolLM, ... as llama.cpp names them) converts to this LLaMA implementation")
    self.arch = arch
    self._tensors = {t.name: t for t in self.reader.tensors}
    self._names: dict[str, str] = {}  # HF name -> GGUF name
    for name in self._tensors:
      m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
      if name in _TOP:
        self._names[_TOP[name]] = name
      elif m and m.group(2) in _LAYER:
        self._names[f"model.layers.{m.group(1)}.{_LAYER[m.group(2)]}"] = name
      elif name != _ROPE_FREQS:
        self._names[f"gguf:{name}"] = name  # reported by validation as an unexpected tensor
    self._check_tensor_types(gguf)
    self.config = self._model_config()
    self.torch_dtype = self._type_summary()  # recorded as model.json's extra.source_dtype
    self._tmp = epath.Path(tempfile.mkdtemp(prefix="hb_jax_gguf_tokenizer_"))
    try:
      files = gguf_tokenizer.write_tokenizer_files(self.reader, self._tmp, self.config, where=self.where)
    except BaseException:
      shutil.rmtree(self._tmp, ignore_errors=True)
      raise
    self.tokenizer_file = files.tokenizer_file
    self.settings_files = files.settings_files

  # ---- metadata -> ModelConfig
  def _meta(self, key: str, default=None, required: bool = False):
    value = field_value(self.reader, f"{self.arch}.{key}", default)
    if value is None and required:
      raise ConversionError(f"{self.path}: metadata key {self.arch}.{key} is missing")
    return value

  def _model_config(self) -> ModelConfig:
    for key in _UNSUPPORTED_KEYS:
      value = self._meta(key)
      if value not in (None, 0, 0.0, False):
        raise ConversionError(f"{self.path}: metadata {self.arch}.{key} = {value!r} is not supported by this "
                              "LLaMA implementation")
    embed = self._tensors.get("token_embd.weight")
    if embed is None:
      raise ConversionError(f"{self.path}: missing tensor token_embd.weight")
    hidden = int(self._meta("embedding_length", required=True))
    heads = self._meta("attention.head_count", required=True)
    kv_heads = self._meta("attention.head_count_kv", heads)
    for key, value in (("attention.head_count", heads), ("attention.head_count_kv", kv_heads)):
      if isinstance(value, list):
        raise ConversionError(f"{self.path}: {self.arch}.{key} differs per layer ({value[:4]}...); expected one "
                              "count for every layer")
    heads, kv_heads = int(heads), int(kv_heads)
    head_dim = int(self._meta("attention.key_length", hidden // heads))
    value_dim = int(self._meta("attention.value_length", head_dim))
    rope_dim = int(self._meta("rope.dimension_count", head_dim))
    if value_dim != head_dim or rope_dim != head_dim:
      raise ConversionError(f"{self.path}: key_length {head_dim}, value_length {value_dim}, rope.dimension_count "
                            f"{rope_dim}: expected all equal (partial RoPE or unequal head sizes are not supported)")
    theta = float(self._meta("rope.freq_base", 10000.0))
    scaling_type = self._meta("rope.scaling.type", "none")
    if scaling_type not in ("none", None):
      raise ConversionError(f"{self.path}: {self.arch}.rope.scaling.type {scaling_type!r} is not supported "
                            "(LLaMA-3.1 scaling arrives as the rope_freqs.weight tensor)")
    context = int(self._meta("context_length", 2048))
    vocab = int(embed.shape[1]) if len(embed.shape) > 1 else 0
    bos = field_value(self.reader, "tokenizer.ggml.bos_token_id", 1)
    eos = field_value(self.reader, "tokenizer.ggml.eos_token_id", 2)
    # Chat models also end a turn at <|eot_id|> / <|eom_id|> (LLaMA-3): llama.cpp stops at every such id.
    extra = [field_value(self.reader, f"tokenizer.ggml.{k}_token_id") for k in ("eot", "eom")]
    extra = tuple(dict.fromkeys(int(i) for i in extra if i is not None and int(i) != int(eos)))
    try:
      return ModelConfig(
          vocab_size=vocab, hidden_size=hidden, num_layers=int(self._meta("block_count", required=True)),
          num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
          intermediate_size=int(self._meta("feed_forward_length", required=True)),
          rms_norm_eps=float(self._meta("attention.layer_norm_rms_epsilon", 1e-5)), rope_theta=theta,
          rope_scaling=self._rope_scaling(theta, head_dim), max_position_embeddings=context,
          tie_word_embeddings="output.weight" not in self._tensors, bos_id=int(bos), eos_id=int(eos),
          extra_eos_ids=extra)
    except ConfigError as e:
      raise ConversionError(f"{self.path}: metadata gives an invalid model config: {e}") from e

  def _rope_scaling(self, theta: float, head_dim: int) -> RopeScaling | None:
    """LLaMA-3.1's scaling from the rope_freqs.weight factors llama.cpp stores: convert_hf_to_gguf.py computes
    them from HF's (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings) and reads
    the last from the top-level config (8192 when absent); the factors are checked against the parameters
    read back, so any other scaling is refused rather than approximated."""
    if _ROPE_FREQS not in self._tensors:
      return None
    factors = self._dequantize(self._tensors[_ROPE_FREQS]).reshape(-1).astype(np.float64)
    original = int(self._meta("rope.scaling.original_context_length", 8192))
    scaling = RopeScaling(factor=float(factors[-1]), low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=original)
    expected = llama3_rope_factors(theta, head_dim, scaling)
    if factors.shape != expected.shape or not np.allclose(factors, expected, rtol=1e-5):
      raise ConversionError(f"{self.path}: tensor {_ROPE_FREQS} holds RoPE factors that are not LLaMA-3.1's scaling "
                            f"(factor {factors[-1]:g}, low 1, high 4, original context {original}); not supported")
    return scaling

  # ---- tensors
  def _check_tensor_types(self, gguf) -> None:
    """Every tensor type must be one `gguf.dequantize` implements; tried once per type on one row."""
    bad: dict[str, list[str]] = {}
    tried: dict[int, bool] = {}
    for name, t in self._tensors.items():
      kind = int(t.tensor_type)
      if kind not in tried:
        try:
          gguf.dequantize(np.asarray(t.data[:1]), t.tensor_type)
          tried[kind] = True
        except (NotImplementedError, ValueError, KeyError):
          tried[kind] = False
      if not tried[kind] or t.tensor_type.name in ("I8", "I16", "I32", "I64"):  # integers hold no weights
        bad.setdefault(t.tensor_type.name, []).append(name)
    if bad:
      import importlib.metadata
      version = importlib.metadata.version("gguf")
      listed = "; ".join(f"{kind}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                         for kind, names in bad.items())
      raise ConversionError(f"{self.path}: tensor types the gguf package ({version}) cannot dequantize into "
                            f"weights: {listed}")

  def _type_summary(self) -> str:
    counts: dict[str, int] = {}
    for t in self._tensors.values():
      counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return "gguf " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))

  def _dequantize(self, t) -> np.ndarray:
    import gguf

    w = gguf.dequantize(t.data, t.tensor_type)
    shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions fastest-first
    return w.reshape(shape)

  def names(self) -> list[str]:
    return sorted(self._names)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(self._tensors[self._names[name]].shape))

  def dtype(self, name: str) -> str:
    return "float32"  # every tensor dequantizes to float32 (types were checked at open)

  def get(self, name: str) -> np.ndarray:
    gguf_name = self._names[name]
    w = self._dequantize(self._tensors[gguf_name])
    if gguf_name.endswith(".attn_q.weight"):
      w = interleaved_to_rotate_half(w, self.config.num_heads)
    elif gguf_name.endswith(".attn_k.weight"):
      w = interleaved_to_rotate_half(w, self.config.num_kv_heads)
    return w

  def close(self) -> None:
    self._tensors.clear()
    self.reader = None
    shutil.rmtree(self._tmp, ignore_errors=True)


def llama3_rope_factors(theta: float, head_dim: int, s: RopeScaling) -> np.ndarray:
  """The per-frequency divisors llama.cpp stores as rope_freqs.weight for LLaMA-3.1 scaling."""
  freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
  high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
  out = []
  for f in freqs:
    wavelen = 2 * math.pi / f
    if wavelen < high_wavelen:
      out.append(1.0)
    elif wavelen > low_wavelen:
      out.append(s.factor)
    else:
      smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / \
          (s.high_freq_factor - s.low_freq_factor)
      out.append(1.0 / ((1 - smooth) / s.factor + smooth))
  return np.asarray(out)

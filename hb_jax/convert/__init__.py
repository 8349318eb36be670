"""Weight conversion between hb_jax model folders and Hugging Face / Meta LLaMA checkpoints."""
from hb_jax.convert.llama import convert, export_hf
from hb_jax.convert.sources import ConversionError, open_source

__all__ = ["convert", "export_hf", "open_source", "ConversionError"]

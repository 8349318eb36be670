"""hb_jax: instruction backtranslation (Humpback) in JAX."""

__version__ = "0.1.0"

"""symbol_tuning: symbol-tune instruction-tuned language models in JAX (Wei et al. 2023)."""

__version__ = "0.1.0"

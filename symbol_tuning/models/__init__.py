"""Flax models: T5.1.1 / Flan-T5 encoder-decoder and the Llama/PaLM-shaped decoder-only family.

Nothing under this package imports TensorFlow or SeqIO: it must run where they are absent.
"""

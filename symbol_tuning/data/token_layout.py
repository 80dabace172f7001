"""The special tokens around a prompt, per model family: the one layout that training batches and
evaluation prompts share.

encoder-decoder (T5 / SeqIO's append_eos): inputs then EOS; targets then EOS; a scored option ends with
EOS, as the targets it was trained on do.
decoder-only (prefix LM): BOS first when the vocabulary has one, then the inputs; targets then EOS; a
scored option is the prompt's continuation without EOS.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from symbol_tuning.data.prompts import utf8_length
from symbol_tuning.data.vocabularies import ByteVocabulary

FAMILIES = ("encoder_decoder", "decoder_only")


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Token ids placed around the text of inputs, targets and scored options."""

    input_prefix: tuple[int, ...]
    input_suffix: tuple[int, ...]
    target_suffix: tuple[int, ...]
    option_suffix: tuple[int, ...]

    @property
    def reserved(self) -> int:
        """Special tokens an input row holds besides its text (subtracted from the prompt budget)."""
        return len(self.input_prefix) + len(self.input_suffix)

    def inputs(self, ids: Sequence[int]) -> list[int]:
        return [*self.input_prefix, *ids, *self.input_suffix]

    def option(self, ids: Sequence[int]) -> list[int]:
        return [*ids, *self.option_suffix]


def token_layout(family: str, vocabulary: Any) -> TokenLayout:
    """The layout of `family` ("encoder_decoder" or "decoder_only") with `vocabulary`'s BOS / EOS ids."""
    eos = (int(vocabulary.eos_id),)
    if family == "encoder_decoder":
        return TokenLayout(input_prefix=(), input_suffix=eos, target_suffix=eos, option_suffix=eos)
    if family == "decoder_only":
        bos = getattr(vocabulary, "bos_id", None)
        return TokenLayout(input_prefix=() if bos is None else (int(bos),), input_suffix=(), target_suffix=eos,
                           option_suffix=())
    raise ValueError(f"model_family must be one of {FAMILIES}, got {family!r}")


def token_length_fn(vocabulary: Any) -> Callable[[str], int]:
    """A text's length in the vocabulary's tokens, without special tokens: UTF-8 bytes for the byte
    vocabulary (exact and fast), the encoded length otherwise."""
    if isinstance(vocabulary, ByteVocabulary):
        return utf8_length
    return lambda text: len(vocabulary.encode(text))

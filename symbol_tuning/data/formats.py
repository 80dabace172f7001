"""The 10 input/label formats of symbol-tuning prompts, as data.

A format renders one exemplar ("Input: {x}\\nOutput: {y}") and the query, which stops at the output
prefix without a trailing space ("Input: {x}\\nOutput:"). Targets and options carry the separator's
leading space (" positive", " 4821") so decoder-only tokenizers see the same text the exemplars
show. Blocks (exemplars, then the query) are joined with a blank line, `BLOCK_SEPARATOR`.
"""
from __future__ import annotations

import dataclasses

BLOCK_SEPARATOR = "\n\n"


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """One input/label format: `input_prefix` + x + `joiner` + `output_prefix` + `target_prefix` + y."""

    name: str
    input_prefix: str
    joiner: str
    output_prefix: str
    target_prefix: str = " "

    def target(self, label: str) -> str:
        """The target text of a label, as it follows the output prefix (" positive")."""
        return self.target_prefix + label

    def query(self, text: str) -> str:
        """The query block: input and output prefix, without the target or a trailing space."""
        return self.input_prefix + text + self.joiner + self.output_prefix

    def exemplar(self, text: str, label: str) -> str:
        """One solved exemplar block: the query block followed by its target."""
        return self.query(text) + self.target(label)


FORMATS: tuple[PromptFormat, ...] = (
    PromptFormat("Input:/Output:", "Input: ", "\n", "Output:"),
    PromptFormat("Input:/Target:", "Input: ", "\n", "Target:"),
    PromptFormat("Input:/Symbol:", "Input: ", "\n", "Symbol:"),
    PromptFormat("Input:/Label:", "Input: ", "\n", "Label:"),
    PromptFormat("Question:/Answer:", "Question: ", "\n", "Answer:"),
    PromptFormat("Student:/Teacher:", "Student: ", "\n", "Teacher:"),
    PromptFormat("X = /Y = ", "X = ", "\n", "Y ="),
    PromptFormat("Q:/A:", "Q: ", "\n", "A:"),
    PromptFormat("{x} -> {y}", "", " ", "->"),
    PromptFormat("Sentences:/Mapped To:", "Sentences: ", "\n", "Mapped To:"),
)
FORMAT_NAMES: tuple[str, ...] = tuple(f.name for f in FORMATS)
_BY_NAME = {f.name: f for f in FORMATS}


def get_format(name: str) -> PromptFormat:
    """The format called `name` (one of FORMAT_NAMES)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown prompt format {name!r}; expected one of {FORMAT_NAMES}") from None

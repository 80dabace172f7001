"""The records every data module passes around: classification examples with their dataset,
instruction (inputs, targets) pairs and generative (BIG-Bench style) examples.

Multi-field inputs (premise/hypothesis, sentence pairs) are rendered to one `text` by the dataset
spec before they get here, so prompt builders, hashing and decontamination see one string.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Example:
    """One classification example: the rendered input text and the index of its label."""

    text: str
    label: int


@dataclasses.dataclass(frozen=True)
class ClassificationData:
    """One split of a classification dataset, ready for prompt building.

    `label_names` are the natural-language labels ("negative", "positive"); `instruction` is the
    task instruction used in the evaluation settings with instructions (None for tuning data).
    """

    name: str
    split: str
    examples: tuple[Example, ...]
    label_names: tuple[str, ...]
    instruction: str | None = None
    task_type: str = "classification"

    def __post_init__(self):
        if len(self.label_names) < 2:
            raise ValueError(f"dataset {self.name!r}: needs at least 2 labels, got {self.label_names!r}")
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"dataset {self.name!r}: duplicate label names {self.label_names!r}")
        for i, ex in enumerate(self.examples):
            if not 0 <= ex.label < len(self.label_names):
                raise ValueError(
                    f"dataset {self.name!r} split {self.split!r} example {i}: label {ex.label} is outside "
                    f"the label set {self.label_names!r}")

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def by_label(self) -> list[list[int]]:
        """Example indices grouped by label."""
        groups: list[list[int]] = [[] for _ in self.label_names]
        for i, ex in enumerate(self.examples):
            groups[ex.label].append(i)
        return groups


@dataclasses.dataclass(frozen=True)
class TextPair:
    """One instruction-tuning or generative example: model inputs and the expected target text."""

    inputs: str
    targets: str


@dataclasses.dataclass(frozen=True)
class GenerativeData:
    """A generative task (BIG-Bench list_functions / simp_turing_concept, instruction data)."""

    name: str
    split: str
    examples: tuple[TextPair, ...]
    task_type: str = "generation"


def texts_of(datasets: Sequence[ClassificationData | GenerativeData]) -> list[str]:
    """Every input text of the given datasets (for hashing in decontamination checks)."""
    out: list[str] = []
    for data in datasets:
        for ex in data.examples:
            out.append(ex.text if isinstance(ex, Example) else ex.inputs)
    return out

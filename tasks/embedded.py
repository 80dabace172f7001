"""The embedded default tasks: generated data only, so the demo and tests run offline.

- "symbol_tuning:gen.<family>": symbol-tuning prompts over each generated tuning family;
- "instructions:gen": the generated instruction data;
- "eval:gen.<family>:<setting>" for each held-out family and prompts.SETTINGS, plus
  "eval:gen.<family>:flipped" (labels-only prompts with flipped labels) for binary families;
- "embedded_symbol_<rate>": symbol data at <rate>% of the stream, instructions the rest.

Data are generated on first use, not at import.
"""
from __future__ import annotations

import functools

from symbol_tuning.data.embedded import datasets as generated
from symbol_tuning.data.prompts import SETTINGS
from symbol_tuning.data.task_builders import eval_task, instruction_task, symbol_task
from symbol_tuning.data.task_registry import MixtureRegistry, TaskRegistry, register_eval_data

SYMBOL_RATES = (0, 16, 33, 50, 66, 83, 100)
TUNING_EXAMPLES = 1000
EVAL_EXAMPLES = 100
VALIDATION_EXAMPLES = 100
EXEMPLAR_EXAMPLES = 200
INSTRUCTION_EXAMPLES = 2000
INSTRUCTION_TASK = "instructions:gen"
FLIPPED_SETTING = "labels_only"
# These byte-level families' sentences are long: at the tiny configs' 512-byte prompts four of them cannot keep
# 2 exemplars per class, so their prompts may fit down to 1 (the paper's floor of 2 holds everywhere else).
BYTE_MIN_PER_CLASS = 1


def _tuning_data(family: str):
    return generated.generated_classification(family, split="train", num_examples=TUNING_EXAMPLES)


def _validation_data(family: str):
    # The family's held-out texts (its "eval" split), never the texts it tunes on.
    return generated.generated_classification(family, split="eval", num_examples=VALIDATION_EXAMPLES)


def _eval_data(family: str):
    data = generated.generated_classification(family, split="eval", num_examples=EVAL_EXAMPLES)
    register_eval_data(data)
    return data


def _exemplar_data(family: str):
    return generated.generated_classification(family, split="train", num_examples=EXEMPLAR_EXAMPLES)


def symbol_task_names() -> list[str]:
    return [f"symbol_tuning:gen.{f.name}" for f in generated.TUNING_FAMILIES]


def eval_task_names() -> list[str]:
    names = []
    for fam in generated.EVAL_FAMILIES:
        names += [f"eval:gen.{fam.name}:{s}" for s in SETTINGS]
        if len(fam.label_names) == 2:
            names.append(f"eval:gen.{fam.name}:flipped")
    return names


def register() -> None:
    """Register the embedded tasks and mixtures (idempotent)."""
    if INSTRUCTION_TASK in TaskRegistry.names():
        return
    for fam in generated.TUNING_FAMILIES:
        TaskRegistry.add(symbol_task(f"symbol_tuning:gen.{fam.name}", functools.partial(_tuning_data, fam.name),
                                     num_examples=TUNING_EXAMPLES, check_eval=False,
                                     validation_loader=functools.partial(_validation_data, fam.name),
                                     min_per_class=BYTE_MIN_PER_CLASS, origin=f"generated family {fam.name!r}"))
    TaskRegistry.add(instruction_task(INSTRUCTION_TASK, functools.partial(
        generated.generated_instruction_data, num_examples=INSTRUCTION_EXAMPLES), num_examples=INSTRUCTION_EXAMPLES))
    for fam in generated.EVAL_FAMILIES:
        query, exemplars = functools.partial(_eval_data, fam.name), functools.partial(_exemplar_data, fam.name)
        for setting in SETTINGS:
            TaskRegistry.add(eval_task(f"eval:gen.{fam.name}:{setting}", query, exemplars, setting=setting,
                                       num_examples=EVAL_EXAMPLES))
        if len(fam.label_names) == 2:
            TaskRegistry.add(eval_task(f"eval:gen.{fam.name}:flipped", query, exemplars, setting=FLIPPED_SETTING,
                                       flipped=True, num_examples=EVAL_EXAMPLES))
    symbols = symbol_task_names()
    for rate in SYMBOL_RATES:
        entries = [(name, rate / 100 / len(symbols)) for name in symbols] if rate else []
        if rate < 100:
            entries.append((INSTRUCTION_TASK, 1 - rate / 100))
        MixtureRegistry.add(f"embedded_symbol_{rate}", entries)


register()

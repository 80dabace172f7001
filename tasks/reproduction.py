"""The embedded reproduction's tasks (symbol_tuning.data.embedded.lexicons), word-level and offline:

- "instructions:lex": instruction prompts over the natural families (the baseline's Flan stand-in);
- "symbol_tuning:lex.<synthetic family>": symbol-tuning prompts, 2-4 exemplars per class, labels
  from the reproduction's tuning symbols;
- "reproduction_instructions": the instruction data alone (stage a and the control arm);
- "reproduction_symbol_<rate>": symbol data at <rate>% of the stream, instructions the rest.

The evaluation side is the "reproduction" suite (symbol_tuning.evaluation.suites). Data are
generated on first use, not at import.
"""
from __future__ import annotations

import functools

from symbol_tuning.data.embedded import lexicons
from symbol_tuning.data.task_builders import instruction_task, symbol_task
from symbol_tuning.data.task_registry import MixtureRegistry, TaskRegistry

SYMBOL_RATES = (50, 80, 100)
TUNING_EXAMPLES = 256
VALIDATION_EXAMPLES = 64
INSTRUCTION_EXAMPLES = 4096
INSTRUCTION_TASK = "instructions:lex"
INSTRUCTION_MIXTURE = "reproduction_instructions"
MIN_PER_CLASS, MAX_PER_CLASS = 2, 4


def symbol_task_names() -> list[str]:
    return [f"symbol_tuning:lex.{name}" for name in lexicons.synthetic_family_names()]


def symbol_mixture(rate: int) -> str:
    return f"reproduction_symbol_{rate}"


def register() -> None:
    """Register the reproduction's tasks and mixtures (idempotent)."""
    if INSTRUCTION_TASK in TaskRegistry.names():
        return
    for name in lexicons.synthetic_family_names():
        data = functools.partial(lexicons.lexicon_classification, name, split="train", num_examples=TUNING_EXAMPLES)
        held = functools.partial(lexicons.lexicon_classification, name, split="eval", num_examples=VALIDATION_EXAMPLES)
        TaskRegistry.add(symbol_task(f"symbol_tuning:lex.{name}", data, num_examples=TUNING_EXAMPLES,
                                     check_eval=False, validation_loader=held, pools=lexicons.reproduction_pools,
                                     min_per_class=MIN_PER_CLASS, max_per_class=MAX_PER_CLASS,
                                     origin=f"reproduction family {name!r}"))
    TaskRegistry.add(instruction_task(INSTRUCTION_TASK, functools.partial(
        lexicons.lexicon_instruction_data, num_examples=INSTRUCTION_EXAMPLES), num_examples=INSTRUCTION_EXAMPLES))
    MixtureRegistry.add(INSTRUCTION_MIXTURE, [(INSTRUCTION_TASK, 1.0)])
    symbols = symbol_task_names()
    for rate in SYMBOL_RATES:
        entries = [(name, rate / 100 / len(symbols)) for name in symbols]
        if rate < 100:
            entries.append((INSTRUCTION_TASK, 1 - rate / 100))
        MixtureRegistry.add(symbol_mixture(rate), entries)


register()

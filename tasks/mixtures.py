"""The symbol-rate grid over the paper's 22 tuning datasets and Flan data: "mix:symbol_<rate>"
(<rate>% symbol data, the rest "instructions:flan"), rates 0/16/33/50/66/83/100."""
from __future__ import annotations

from symbol_tuning.data import specs
from symbol_tuning.data.task_builders import register_mixture
from symbol_tuning.data.task_registry import MixtureRegistry

from .instructions import FLAN_TASK
from .tuning import register as register_tuning_tasks

SYMBOL_RATES = (0, 16, 33, 50, 66, 83, 100)


def register() -> None:
    """Register the grid (idempotent), after the paper's tuning tasks so that it uses them and their sources."""
    register_tuning_tasks()
    for rate in SYMBOL_RATES:
        if f"mix:symbol_{rate}" not in MixtureRegistry.names():
            register_mixture(f"mix:symbol_{rate}", datasets=list(specs.TUNING_DATASETS), symbol_rate=rate / 100,
                             instruction_task=FLAN_TASK)


register()

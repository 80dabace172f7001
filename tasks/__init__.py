"""Task and mixture registrations (imported as `symbol_tuning.tasks`): the embedded generated
tasks, the paper's tuning and evaluation datasets, Flan instruction data and the symbol-rate grids.
Importing registers names only; no data are read and no network is touched."""
from . import embedded, evaluation, instructions, local, mixtures, reproduction, tuning  # noqa: F401

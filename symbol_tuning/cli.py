"""The `symbol-tuning` console script: one subcommand per module, each also runnable as
`python -m symbol_tuning.<module>`."""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

# subcommand -> (module, one-line help). Each module exposes `main(argv: Sequence[str] | None) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("symbol_tuning.demo", "symbol-tune a tiny model on the embedded default and print the paper's table"),
    "train": ("symbol_tuning.train", "train with T5X-style gin flags (--gin_file, --gin.MACRO=...)"),
    "eval": ("symbol_tuning.eval", "evaluate a checkpoint in the four settings, flipped labels and BIG-Bench"),
    "sweep": ("symbol_tuning.sweep", "resumable evaluation sweep over checkpoints x models x settings x k"),
    "plan": ("symbol_tuning.plan", "parameter count and per-device memory of a gin config on a topology"),
    "import-hf": ("symbol_tuning.import_hf", "HF safetensors checkpoint (T5 / Llama / Qwen2 / Mistral) -> native"),
    "export-hf": ("symbol_tuning.export_hf", "native checkpoint -> HF safetensors + config.json"),
}


def usage() -> str:
    lines = ["usage: symbol-tuning <command> [flags]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in sorted(COMMANDS.items())]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"symbol-tuning: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

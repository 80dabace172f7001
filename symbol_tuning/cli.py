"""The `symbol-tuning` console script: one subcommand per module, each also runnable as
`python -m symbol_tuning.<module>`."""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

# subcommand -> (module, one-line help). Each module exposes `main(argv: Sequence[str] | None) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("symbol_tuning.demo", "run the embedded default end to end on this machine"),
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

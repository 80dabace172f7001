"""`python -m symbol_tuning.import_hf --hf_dir=PATH --out=DIR [--dtype=float32]`: an HF checkpoint
(llama / qwen2 / mistral / t5 by config.json's model_type) into our native params-only checkpoint."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Sequence

from symbol_tuning.models.native_io import DTYPES, save_native

IMPORTERS = {"llama": ("symbol_tuning.models.hf_llama", "import_llama"),
             "qwen2": ("symbol_tuning.models.hf_llama", "import_llama"),
             "mistral": ("symbol_tuning.models.hf_llama", "import_llama"),
             "t5": ("symbol_tuning.models.hf_t5", "import_t5")}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit 2 with the flag named, never a traceback
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def import_checkpoint(hf_dir: str) -> tuple[Any, Any]:
    """(config, params) from an HF checkpoint directory, dispatched on its model_type."""
    from symbol_tuning.models.safetensors_io import read_hf_config
    model_type = read_hf_config(hf_dir).get("model_type")
    if model_type not in IMPORTERS:
        raise ValueError(f"{hf_dir}/config.json: model_type {model_type!r} not supported "
                         f"(supported: {', '.join(sorted(IMPORTERS))})")
    module, fn = IMPORTERS[model_type]
    return getattr(importlib.import_module(module), fn)(hf_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="import-hf", description=__doc__)
    parser.add_argument("--hf_dir", required=True, help="HF checkpoint directory (config.json + safetensors)")
    parser.add_argument("--out", required=True, help="native checkpoint directory to create")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="stored parameter dtype")
    args = parser.parse_args(argv)
    try:
        config, params = import_checkpoint(args.hf_dir)
        save_native(config, params, args.out, dtype=args.dtype)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"import-hf: --hf_dir={args.hf_dir} --out={args.out}: {e}", file=sys.stderr)
        return 1
    print(f"import-hf: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

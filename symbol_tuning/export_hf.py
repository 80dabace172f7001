"""`python -m symbol_tuning.export_hf --checkpoint=DIR --out=HF_DIR`: our native params-only checkpoint
back into an HF checkpoint (config.json + safetensors) that `transformers` loads."""
from __future__ import annotations

import importlib
import sys
from typing import Any, Sequence

from symbol_tuning.import_hf import _Parser
from symbol_tuning.models.native_io import load_native

EXPORTERS = {"decoder_only": ("symbol_tuning.models.hf_llama", "export_llama"),
             "encoder_decoder": ("symbol_tuning.models.hf_t5", "export_t5")}


def export_checkpoint(config: Any, params: Any, out_dir: str) -> None:
    """Write (config, params) as an HF checkpoint, dispatched on the config's family."""
    from symbol_tuning.models.native_io import family_of
    module, fn = EXPORTERS[family_of(config)]
    getattr(importlib.import_module(module), fn)(config, params, out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="export-hf", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="native checkpoint directory (from import-hf)")
    parser.add_argument("--out", required=True, help="HF checkpoint directory to create")
    args = parser.parse_args(argv)
    try:
        config, params = load_native(args.checkpoint)
        export_checkpoint(config, params, args.out)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"export-hf: --checkpoint={args.checkpoint} --out={args.out}: {e}", file=sys.stderr)
        return 1
    print(f"export-hf: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

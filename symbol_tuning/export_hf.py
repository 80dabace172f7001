"""`python -m symbol_tuning.export_hf --checkpoint=DIR --out=HF_DIR`: our native params-only checkpoint
back into an HF checkpoint (config.json + safetensors) that `transformers` loads."""
from __future__ import annotations

import sys
from typing import Sequence

from symbol_tuning.gin_utils import FlagParser
from symbol_tuning.models.families import export_hf_checkpoint
from symbol_tuning.models.native_io import load_native


def main(argv: Sequence[str] | None = None) -> int:
    parser = FlagParser(prog="export-hf", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="native checkpoint directory (from import-hf)")
    parser.add_argument("--out", required=True, help="HF checkpoint directory to create")
    args = parser.parse_args(argv)
    try:
        config, params = load_native(args.checkpoint)
        export_hf_checkpoint(config, params, args.out)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"export-hf: --checkpoint={args.checkpoint} --out={args.out}: {e}", file=sys.stderr)
        return 1
    print(f"export-hf: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m symbol_tuning.import_hf --hf_dir=PATH --out=DIR [--dtype=float32]`: an HF checkpoint
(llama / qwen2 / mistral / t5 by config.json's model_type) into our native params-only checkpoint."""
from __future__ import annotations

import sys
from typing import Sequence

from symbol_tuning.gin_utils import FlagParser
from symbol_tuning.models.families import import_hf_checkpoint
from symbol_tuning.models.native_io import DTYPES, save_native


def main(argv: Sequence[str] | None = None) -> int:
    parser = FlagParser(prog="import-hf", description=__doc__)
    parser.add_argument("--hf_dir", required=True, help="HF checkpoint directory (config.json + safetensors)")
    parser.add_argument("--out", required=True, help="native checkpoint directory to create")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="stored parameter dtype")
    args = parser.parse_args(argv)
    try:
        config, params = import_hf_checkpoint(args.hf_dir)
        save_native(config, params, args.out, dtype=args.dtype)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"import-hf: --hf_dir={args.hf_dir} --out={args.out}: {e}", file=sys.stderr)
        return 1
    print(f"import-hf: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m symbol_tuning.export_hf --checkpoint=DIR --out=HF_DIR [--step=N]`: a checkpoint back into an HF
checkpoint (config.json + safetensors) that `transformers` loads.

DIR is our native params-only checkpoint (from import-hf) or a training MODEL_DIR (its Orbax step N, the
latest by default, with the model config from the model_config.json `train` writes). DIR and HF_DIR may
be gs:// URLs (an HF_DIR on GCS is written locally, then uploaded).
"""
from __future__ import annotations

import sys
from typing import Sequence

from symbol_tuning.gin_utils import FlagParser


def _load(path: str, step: int | None):
    """(config, params) of a native checkpoint or of step `step` of a training dir."""
    from symbol_tuning.models.native_io import load_native
    from symbol_tuning.training import checkpoints, storage

    root = storage.resolve(path, what="--checkpoint")
    if not root.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if (root / "config.json").is_file() and not checkpoints.finished_steps(str(root)):
        if step is not None:
            raise ValueError(f"--step={step}: {path} is a native checkpoint (one set of params), not a training dir")
        return storage.with_local_copy(str(root), load_native)
    from symbol_tuning.evaluation.checkpoint_loading import load_for_eval

    loaded = load_for_eval(str(root), step=step)
    print(f"export-hf: {path} step {loaded.step}")
    return loaded.config, loaded.params


def main(argv: Sequence[str] | None = None) -> int:
    parser = FlagParser(prog="export-hf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="native checkpoint dir or training MODEL_DIR")
    parser.add_argument("--step", type=int, default=None, help="training step to export (default: the latest)")
    parser.add_argument("--out", required=True, help="HF checkpoint directory to create")
    args = parser.parse_args(argv)
    from symbol_tuning.models.families import export_hf_checkpoint
    from symbol_tuning.training import storage

    try:
        config, params = _load(args.checkpoint, args.step)
        storage.publish_dir(args.out, lambda local: export_hf_checkpoint(config, params, local))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"export-hf: --checkpoint={args.checkpoint} --out={args.out}: {e}", file=sys.stderr)
        return 1
    print(f"export-hf: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

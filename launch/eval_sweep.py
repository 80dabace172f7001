#!/usr/bin/env python
"""Run an evaluation sweep (see symbol_tuning/sweep.py for the config format); resumable: rerun the same
command after an interruption and only the missing cells run.

    python launch/eval_sweep.py --config=sweep.json --output_dir=gs-or-local/dir
"""
import sys

from symbol_tuning.sweep import main

if __name__ == "__main__":
    sys.exit(main())

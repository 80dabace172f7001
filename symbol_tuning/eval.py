"""`python -m symbol_tuning.eval --checkpoint=PATH --suite=paper --data_root=/path/to/raw/data`:
evaluate a checkpoint in the paper's four settings (+ flipped labels) or on BIG-Bench, writing
records.jsonl / summary.{csv,md,json} per step and results.{csv,md} + PNG plots under --output_dir.

--checkpoint: a native dir, an HF dir, or an Orbax training dir (with --step=N, latest by default, or
--all_steps to evaluate every step not yet in --output_dir). --model_config: a native-style config.json
the checkpoint must match (needed for an Orbax dir without the model_config.json `train` writes). Paths
may be gs:// URLs. Started as several processes (JAX_* / Slurm / TPU VM environment, or the T5X flags
--coordinator_address --process_count --process_index), every host scores its share and process 0 writes.
Bad flags exit 2 naming the flag; bad data or a mismatching checkpoint exit 1 with the reason, before any
model compute.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Sequence

import gin

from symbol_tuning import gin_utils
from symbol_tuning.data.prompts import INSTRUCTION_PLACEMENTS, check_instruction_placement
from symbol_tuning.evaluation.evaluator import EvalOptions
from symbol_tuning.models.safetensors_io import CheckpointMismatchError
from symbol_tuning.training import distributed
from symbol_tuning.training.checkpoint_integrity import DamagedCheckpointError


def _positive(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be >= 1, got {value}")
        return value
    return parse


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def build_parser() -> argparse.ArgumentParser:
    from symbol_tuning.evaluation.suites import PAPER_SOURCES, SUITES

    p = gin_utils.FlagParser(prog="symbol_tuning.eval", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    gin_utils.add_gin_flags(p)
    p.add_argument("--checkpoint", default=None, help="native, HF or Orbax training checkpoint directory (required)")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--step", type=int, default=None, help="Orbax step to evaluate (default: latest)")
    steps.add_argument("--all_steps", action="store_true", help="evaluate every Orbax step not yet done")
    p.add_argument("--suite", default="embedded", choices=SUITES)
    p.add_argument("--data_root", default=None, help="raw data directory (paper suite with --source=local, bigbench)")
    p.add_argument("--source", default="local", choices=PAPER_SOURCES, help="where the paper suite's data comes from")
    p.add_argument("--datasets", type=_names, default=None, help="comma-separated dataset / task names")
    p.add_argument("--settings", type=_names, default=None, help="comma-separated settings (default: all)")
    p.add_argument("--concepts", type=_names, default=None, help="list_functions concept ids (bigbench suite)")
    p.add_argument("--k_per_class", type=_positive("--k_per_class"), default=EvalOptions.k_per_class)
    p.add_argument("--vocabulary", default="bytes", help="bytes | spm:<model> | hf:<tokenizer>")
    p.add_argument("--max_input_length", type=_positive("--max_input_length"), default=EvalOptions.max_input_length)
    p.add_argument("--min_prompt_bucket", type=_positive("--min_prompt_bucket"), default=EvalOptions.min_prompt_bucket)
    p.add_argument("--max_queries", type=_positive("--max_queries"), default=None, help="queries per dataset")
    p.add_argument("--batch_size", type=_positive("--batch_size"), default=EvalOptions.batch_size)
    p.add_argument("--seed", type=int, default=EvalOptions.seed)
    p.add_argument("--instruction_placement", choices=INSTRUCTION_PLACEMENTS, default=EvalOptions.instruction_placement,
                   help="instruction once before the exemplars (header) or before every exemplar and the query "
                        "(every_exemplar, the paper's Figure 1); instruction settings only")
    p.add_argument("--model_config", default=None, help="native-style config.json the checkpoint must match")
    p.add_argument("--allow_empty_datasets", action="store_true",
                   help="report a dataset with no queries as missing in the tables instead of failing")
    p.add_argument("--output_dir", default="eval_results")
    p.add_argument("--label", default=None, help="model name in tables (default: checkpoint dir name)")
    distributed.add_flags(p)
    gin_utils.add_verbose_flag(p)
    return p


def _model_config(path: str | None):
    if path is None:
        return None
    from symbol_tuning.evaluation.checkpoint_loading import config_from_file
    from symbol_tuning.training import storage

    if not storage.resolve(path, what="--model_config").is_file():
        raise FileNotFoundError(f"--model_config: {path} does not exist")
    try:
        return config_from_file(path)
    except ValueError as e:
        raise ValueError(f"--model_config: {e}") from None


def run(args: argparse.Namespace) -> None:
    """Validate names, load and check the checkpoint, evaluate, and write the results."""
    from symbol_tuning.data.vocabularies import get_vocabulary
    from symbol_tuning.evaluation import checkpoint_loading, evaluator, reporting
    from symbol_tuning.evaluation.suites import build_suite

    options = EvalOptions(settings=args.settings, seed=args.seed, k_per_class=args.k_per_class,
                          max_input_length=args.max_input_length, batch_size=args.batch_size,
                          min_prompt_bucket=args.min_prompt_bucket,
                          allow_empty_datasets=args.allow_empty_datasets,
                          instruction_placement=args.instruction_placement)
    suite = build_suite(args.suite, data_root=args.data_root, source=args.source, datasets=args.datasets,
                        max_queries=args.max_queries, seed=args.seed, concepts=args.concepts)
    vocabulary = get_vocabulary(args.vocabulary)
    config = _model_config(args.model_config)
    label = args.label or os.path.basename(os.path.normpath(args.checkpoint))
    mesh, rules = distributed.evaluation_mesh()
    if args.all_steps:
        evaluator.evaluate_all_checkpoints(args.checkpoint, suite=suite, vocabulary=vocabulary,
                                           output_dir=args.output_dir, options=options, model_config=config,
                                           label=label, mesh=mesh, rules=rules)
        return
    loaded = checkpoint_loading.load_for_eval(args.checkpoint, model_config=config, step=args.step, mesh=mesh,
                                              rules=rules)
    result = evaluator.evaluate(loaded.model, loaded.params, suite, vocabulary=vocabulary, options=options,
                                mesh=mesh)
    reporting.write_step_results(args.output_dir, step=loaded.step, records=result.records, summary=result.summary,
                                 model=label)
    reporting.write_overview(args.output_dir, {loaded.step: result.summary}, model=label)
    if reporting.is_process_zero():
        print(reporting.summary_markdown(result.summary, title=label))


@gin.configurable(module="evaluate")
def flags(*, checkpoint: str | None = None, step: int | None = None, all_steps: bool | None = None,
          suite: str | None = None, data_root: str | None = None, source: str | None = None,
          datasets: Sequence[str] | None = None, settings: Sequence[str] | None = None,
          concepts: Sequence[str] | None = None, k_per_class: int | None = None, vocabulary: str | None = None,
          max_input_length: int | None = None, min_prompt_bucket: int | None = None,
          max_queries: int | None = None, batch_size: int | None = None, seed: int | None = None,
          model_config: str | None = None, output_dir: str | None = None, label: str | None = None,
          allow_empty_datasets: bool | None = None, instruction_placement: str | None = None) -> dict[str, Any]:
    """The eval flags as gin bindings (`evaluate.flags.suite = 'paper'`, see gin_configs/runs/eval.gin);
    flags given on the command line win over the config."""
    values = dict(checkpoint=checkpoint, step=step, all_steps=all_steps, suite=suite, data_root=data_root,
                  source=source, datasets=datasets, settings=settings, concepts=concepts, k_per_class=k_per_class,
                  vocabulary=vocabulary, max_input_length=max_input_length, min_prompt_bucket=min_prompt_bucket,
                  max_queries=max_queries, batch_size=batch_size, seed=seed, model_config=model_config,
                  output_dir=output_dir, label=label, allow_empty_datasets=allow_empty_datasets,
                  instruction_placement=instruction_placement)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if v is not None}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = gin_utils.parse_args_with_gin(parser, list(sys.argv[1:] if argv is None else argv), flags)
    except gin_utils.GinConfigError as e:
        parser.error(str(e))
    if args.checkpoint is None:
        parser.error("--checkpoint is required (a flag, or evaluate.flags.checkpoint / CHECKPOINT in a gin file)")
    try:  # a gin-bound value skips argparse's choices
        check_instruction_placement(args.instruction_placement,
                                    what="--instruction_placement (evaluate.flags.instruction_placement)")
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from symbol_tuning.training.console import quiet_libraries

    quiet_libraries(args.verbose)
    try:
        distributed.start(args)
    except ValueError as e:
        parser.error(str(e))
    try:
        run(args)
    except (ValueError, KeyError, FileNotFoundError, CheckpointMismatchError, DamagedCheckpointError) as e:
        distributed.report_failure(e, command="eval")
        print(f"symbol_tuning.eval: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        distributed.report_failure(e, command="eval")
        raise
    distributed.mark_done()
    return 0


if __name__ == "__main__":
    sys.exit(main())

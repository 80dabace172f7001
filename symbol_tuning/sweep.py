"""Evaluation sweeps over models x checkpoints (baseline / tuned, optional steps) x settings x k, resumable
cell by cell, ending in the paper's Table 1 and plots.

`python -m symbol_tuning.sweep --config=sweep.json --output_dir=DIR` with a JSON (or YAML) file:

    {"suite": "paper", "data_root": "/data/raw", "settings": ["instr_labels", "neither", "flipped"],
     "k_per_class": [4], "max_queries": 100, "max_input_length": 2048, "batch_size": 8,
     "models": {"flan-t5-xl": {"vocabulary": "spm:/ckpt/spiece.model", "baseline": "/ckpt/flan_t5_xl",
                               "tuned": "/runs/st_xl", "steps": [1000, 2000, 4000],
                               "model_config": "/ckpt/flan_t5_xl/config.json"}}}

"instruction_placement" ("header", the default, or "every_exemplar": the paper's Figure 1) applies to the
whole sweep and is recorded in every cell.

A cell is (model, variant, step, setting, k). Each finished cell is appended as one whole line (and
fsynced) to DIR/results.jsonl under its key, with what it measured (checkpoint step + content hash,
suite and settings: evaluation.sweep_records); a restarted sweep runs only the cells that are missing
or whose checkpoint or inputs changed, so a sweep killed mid-way finishes exactly what is left (a torn
last line is moved aside and its cell rerun). A damaged checkpoint's cells are skipped with a message
and the sweep exits 1 after the others. A checkpoint is loaded once for all its missing
cells. At the end: results.csv, table.md (rows: models; columns: settings; cells "baseline -> tuned
(+change)" at the last step of the tuned run, one table per k), settings.png (grouped bars, one panel per k)
and, for a tuned run with several steps, accuracy_vs_step_<model>.png (one panel per k). Only process 0 writes.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

import gin

from symbol_tuning import gin_utils
from symbol_tuning.training.checkpoint_integrity import DamagedCheckpointError

log = logging.getLogger(__name__)
VARIANTS = ("baseline", "tuned")
RESULTS = "results.jsonl"
_RUN_KEYS = ("suite", "data_root", "source", "datasets", "concepts", "settings", "k_per_class", "max_queries",
             "max_input_length", "min_prompt_bucket", "batch_size", "seed", "instruction_placement", "models")
_MODEL_KEYS = ("vocabulary", "baseline", "tuned", "steps", "baseline_steps", "model_config")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One unit of sweep work: a checkpoint (model, variant, step) evaluated in one setting with k exemplars."""

    model: str
    variant: str
    step: int | None
    setting: str
    k_per_class: int

    @property
    def key(self) -> str:
        step = "final" if self.step is None else self.step
        return f"{self.model}|{self.variant}|{step}|{self.setting}|k={self.k_per_class}"


def load_spec(path: str) -> dict[str, Any]:
    """A sweep spec from JSON or YAML (.yaml / .yml), local or gs://, checked for unknown keys and fields."""
    from symbol_tuning.training import storage

    spec_path = storage.resolve(path, what="--config")
    if not spec_path.is_file():
        raise FileNotFoundError(f"sweep config {path} does not exist")
    text = spec_path.read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        spec = yaml.safe_load(text)
    else:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    return check_spec(spec, source=path)


def check_spec(spec: Any, *, source: str = "sweep spec") -> dict[str, Any]:
    """Validate a spec dict; errors name the field."""
    from symbol_tuning.evaluation.evaluator import EvalOptions, check_settings

    if not isinstance(spec, dict):
        raise ValueError(f"{source}: expected an object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(_RUN_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown fields {unknown}; known: {list(_RUN_KEYS)}")
    models = spec.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError(f"{source}: 'models' must map model names to {{vocabulary, baseline, tuned, ...}}")
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: models.{name} must be an object")
        bad = sorted(set(entry) - set(_MODEL_KEYS))
        if bad:
            raise ValueError(f"{source}: models.{name}: unknown fields {bad}; known: {list(_MODEL_KEYS)}")
        if not any(entry.get(v) for v in VARIANTS):
            raise ValueError(f"{source}: models.{name} needs a 'baseline' and/or 'tuned' checkpoint path")
    spec = dict(spec)
    if spec.get("settings") is not None:
        spec["settings"] = list(check_settings(spec["settings"]))
    if spec.get("instruction_placement") is not None:
        from symbol_tuning.data.prompts import check_instruction_placement

        check_instruction_placement(spec["instruction_placement"], what=f"{source}: instruction_placement")
    ks = spec.get("k_per_class", [EvalOptions.k_per_class])
    ks = [ks] if isinstance(ks, int) else list(ks)
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"{source}: k_per_class must be a positive integer or a list of them, got {ks!r}")
    spec["k_per_class"] = ks
    return spec


def plan_cells(spec: Mapping[str, Any], settings: Sequence[str]) -> list[Cell]:
    """Every cell of the sweep in a stable order (models, variants, steps, k, settings)."""
    cells = []
    for name, entry in spec["models"].items():
        for variant in VARIANTS:
            if not entry.get(variant):
                continue
            steps = entry.get("steps" if variant == "tuned" else "baseline_steps") or [None]
            for step in steps:
                for k in spec["k_per_class"]:
                    cells.extend(Cell(name, variant, step, s, k) for s in settings)
    return cells


def _settings_for(spec: Mapping[str, Any], suite) -> list[str]:
    from symbol_tuning.evaluation.evaluator import EVAL_SETTINGS, GENERATIVE

    out = []
    if suite.datasets:
        out += list(spec.get("settings") or EVAL_SETTINGS)
    if suite.generative:
        out.append(GENERATIVE)
    return out


def _cell_result(cell: Cell, loaded, suite, vocabulary, spec: Mapping[str, Any], mesh=None) -> dict[str, Any]:
    from symbol_tuning.evaluation.evaluator import GENERATIVE, EvalOptions, evaluate
    from symbol_tuning.evaluation.suites import EvalSuite

    defaults = EvalOptions()
    options = EvalOptions(settings=None if cell.setting == GENERATIVE else [cell.setting],
                          seed=spec.get("seed", defaults.seed), k_per_class=cell.k_per_class,
                          max_input_length=spec.get("max_input_length", defaults.max_input_length),
                          batch_size=spec.get("batch_size", defaults.batch_size),
                          min_prompt_bucket=spec.get("min_prompt_bucket", defaults.min_prompt_bucket),
                          instruction_placement=spec.get("instruction_placement") or defaults.instruction_placement)
    if cell.setting == GENERATIVE:
        summary = evaluate(loaded.model, loaded.params, EvalSuite(suite.name, generative=suite.generative),
                           vocabulary=vocabulary, options=options, mesh=mesh).summary
        per, acc = summary["generative"], float(sum(summary["generative"].values()) / len(summary["generative"]))
    else:
        summary = evaluate(loaded.model, loaded.params, EvalSuite(suite.name, datasets=suite.datasets),
                           vocabulary=vocabulary, options=options, mesh=mesh).summary
        per, acc = summary["accuracy"].get(cell.setting, {}), summary["average"].get(cell.setting)
        if acc is None:
            raise ValueError(f"cell {cell.key}: no dataset of suite {suite.name!r} applies to setting {cell.setting!r}")
    out = {"key": cell.key, **dataclasses.asdict(cell), "accuracy": acc, "per_dataset": per,
           "chance": 0.5 if cell.setting == "flipped" else summary.get("chance"),
           "instruction_placement": options.instruction_placement}
    if cell.setting != GENERATIVE and "average_length_normalized" in summary:
        out["accuracy_length_normalized"] = summary["average_length_normalized"].get(cell.setting)
        out["per_dataset_length_normalized"] = summary["accuracy_length_normalized"].get(cell.setting, {})
    return out


def run_sweep(spec: Mapping[str, Any], output_dir: str, *, after_cell: Callable[[dict], None] | None = None,
              loader: Callable[..., Any] | None = None, mesh=None, rules=None) -> list[dict[str, Any]]:
    """Run the missing cells of `spec`, then write the tables and plots; returns every cell's record.

    after_cell(record) runs after each new cell is saved (progress hooks; tests use it to interrupt).
    loader(path, model_config=..., step=...) defaults to checkpoint_loading.load_for_eval (with `mesh` and
    `rules`: params placed on the mesh, every host scoring its share of each batch).
    """
    from symbol_tuning.data.vocabularies import get_vocabulary
    from symbol_tuning.evaluation import reporting, sweep_records
    from symbol_tuning.evaluation.checkpoint_loading import config_from_file, load_for_eval
    from symbol_tuning.evaluation.suites import build_suite

    spec = check_spec(dict(spec))
    suite = build_suite(spec.get("suite", "embedded"), data_root=spec.get("data_root"),
                        source=spec.get("source", "local"), datasets=spec.get("datasets"),
                        max_queries=spec.get("max_queries"), seed=spec.get("seed", 0), concepts=spec.get("concepts"))
    cells = plan_cells(spec, _settings_for(spec, suite))
    results = os.path.join(output_dir, RESULTS)
    stored = {r["key"]: r for r in latest_records(sweep_records.read_records(results,
                                                                             repair=reporting.is_process_zero()))}
    loader = loader or functools.partial(load_for_eval, mesh=mesh, rules=rules)
    identity: dict[tuple, dict] = {}
    todo = []
    for c in cells:
        entry = spec["models"][c.model]
        ident = identity.setdefault((c.model, c.variant, c.step),
                                    sweep_records.checkpoint_identity(entry[c.variant], c.step))
        if c.key not in stored or not sweep_records.is_current(stored[c.key], ident,
                                                               sweep_records.cell_inputs(spec, entry)):
            todo.append(c)
    log.info("sweep: %d cells, %d done, %d to run", len(cells), len(cells) - len(todo), len(todo))
    loaded_key, loaded, damaged = None, None, []
    for cell in todo:
        entry = spec["models"][cell.model]
        ckpt_key = (cell.model, cell.variant, cell.step)
        if any(key == ckpt_key for key, _ in damaged):
            continue
        if ckpt_key != loaded_key:
            config_path = entry.get("model_config")
            config = config_from_file(config_path) if config_path else None
            try:
                loaded, loaded_key = loader(entry[cell.variant], model_config=config, step=cell.step), ckpt_key
            except DamagedCheckpointError as e:
                log.error("sweep: %s; its cells are skipped, going on with the others", e)
                damaged.append((ckpt_key, e))
                continue
        record = _cell_result(cell, loaded, suite, get_vocabulary(entry.get("vocabulary", "bytes")), spec, mesh)
        record.update(checkpoint=entry[cell.variant], identity=identity[ckpt_key],
                      inputs=sweep_records.cell_inputs(spec, entry))
        if reporting.is_process_zero():
            sweep_records.append_record(results, record)
        if after_cell is not None:
            after_cell(record)
    records = latest_records(sweep_records.read_records(results, repair=False), {c.key for c in cells})
    write_reports(records, output_dir)
    if damaged:
        first = damaged[0][1]
        raise DamagedCheckpointError(first.step, first.path, f"{first.reason}; cells of damaged checkpoints skipped: "
                                     f"{[f'{m}|{v}|{s}' for (m, v, s), _ in damaged]}")
    return records


def latest_records(records: Iterable[Mapping[str, Any]], keys: set[str] | None = None) -> list[dict[str, Any]]:
    """One record per key (the last written), restricted to `keys` when given."""
    by_key: dict[str, dict] = {}
    for r in records:
        if keys is None or r.get("key") in keys:
            by_key[r["key"]] = dict(r)
    return list(by_key.values())


def _step_order(step: Any) -> float:
    return float("inf") if step is None else float(step)


def write_reports(records: Sequence[Mapping[str, Any]], output_dir: str) -> None:
    """results.csv, table.md (per k, tuned at its last step), settings.png and accuracy_vs_step_<model>.png."""
    from symbol_tuning.evaluation import reporting

    if not reporting.is_process_zero() or not records:
        return
    columns = ["key", "model", "variant", "step", "setting", "k_per_class", "instruction_placement", "accuracy",
               "accuracy_length_normalized", "chance", "checkpoint"]
    reporting.write_csv(os.path.join(output_dir, "results.csv"), records, columns)
    settings = list(dict.fromkeys(r["setting"] for r in records))
    tables, bars = [], []
    for k in sorted({r["k_per_class"] for r in records}):
        final = []
        for model in dict.fromkeys(r["model"] for r in records):
            for variant in VARIANTS:
                mine = [r for r in records if r["model"] == model and r["variant"] == variant and r["k_per_class"] == k]
                if mine:
                    last = max((r["step"] for r in mine), key=_step_order)
                    final += [r for r in mine if r["step"] == last]
        tables.append(f"## k = {k} exemplars per class\n\n" + reporting.table1_markdown(final, settings=settings))
        bars += final
    reporting._atomic_write(os.path.join(output_dir, "table.md"), "\n".join(tables))
    reporting.plot_setting_bars(bars, os.path.join(output_dir, "settings.png"), panel_key="k_per_class",
                                title="Average accuracy over the sweep's datasets per prompt setting "
                                      "(tuned models at their last evaluated step)")
    for model in dict.fromkeys(r["model"] for r in records):
        stepped = [r for r in records if r["model"] == model and r["variant"] == "tuned" and r["step"] is not None]
        if len({r["step"] for r in stepped}) >= 2:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
            reporting.plot_accuracy_vs_step(stepped, os.path.join(output_dir, f"accuracy_vs_step_{safe}.png"),
                                            panel_key="k_per_class",
                                            title=f"{model} (symbol-tuned): average accuracy vs training step")


@gin.configurable(module="sweep")
def flags(*, config: str | None = None, output_dir: str | None = None, data_root: str | None = None,
          k_per_class: str | None = None, settings: str | None = None,
          instruction_placement: str | None = None) -> dict[str, Any]:
    """The sweep flags as gin bindings (`sweep.flags.config = '...'`, see gin_configs/runs/sweep.gin);
    flags given on the command line win over the config."""
    values = dict(config=config, output_dir=output_dir, data_root=data_root, k_per_class=k_per_class,
                  settings=settings, instruction_placement=instruction_placement)
    return {k: v for k, v in values.items() if v is not None}


def main(argv: Sequence[str] | None = None) -> int:
    parser = gin_utils.FlagParser(prog="symbol_tuning.sweep", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    gin_utils.add_gin_flags(parser)
    from symbol_tuning.data.prompts import INSTRUCTION_PLACEMENTS

    parser.add_argument("--config", default=None, help="sweep spec (.json, .yaml or .yml) (required)")
    parser.add_argument("--output_dir", default=None, help="results.jsonl, results.csv, table.md and plots (required)")
    parser.add_argument("--data_root", default=None, help="override the spec's data_root")
    parser.add_argument("--k_per_class", default=None, help="override: comma-separated k values")
    parser.add_argument("--settings", default=None, help="override: comma-separated settings")
    parser.add_argument("--instruction_placement", default=None, choices=INSTRUCTION_PLACEMENTS,
                        help="override: the instruction once before the exemplars (header, the default) or before "
                             "every exemplar and the query (every_exemplar, the paper's Figure 1)")
    from symbol_tuning.training import distributed

    distributed.add_flags(parser)
    gin_utils.add_verbose_flag(parser)
    try:
        args = gin_utils.parse_args_with_gin(parser, list(sys.argv[1:] if argv is None else argv), flags)
    except gin_utils.GinConfigError as e:
        parser.error(str(e))
    for flag in ("config", "output_dir"):
        if getattr(args, flag) is None:
            parser.error(f"--{flag} is required (a flag, or sweep.flags.{flag} in a gin file)")
    if args.instruction_placement is not None:  # a gin-bound value skips argparse's choices
        from symbol_tuning.data.prompts import check_instruction_placement

        try:
            check_instruction_placement(args.instruction_placement,
                                        what="--instruction_placement (sweep.flags.instruction_placement)")
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
        spec = load_spec(args.config)
        if args.data_root:
            spec["data_root"] = args.data_root
        if args.k_per_class:
            try:
                spec["k_per_class"] = [int(k) for k in args.k_per_class.split(",")]
            except ValueError:
                raise ValueError(f"--k_per_class: expected comma-separated integers, got "
                                 f"{args.k_per_class!r}") from None
        if args.settings:
            spec["settings"] = [s.strip() for s in args.settings.split(",") if s.strip()]
        if args.instruction_placement:
            spec["instruction_placement"] = args.instruction_placement
        mesh, rules = distributed.evaluation_mesh()
        run_sweep(spec, args.output_dir, mesh=mesh, rules=rules)
    except (ValueError, KeyError, FileNotFoundError, DamagedCheckpointError) as e:
        distributed.report_failure(e, command="sweep")
        print(f"symbol_tuning.sweep: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        distributed.report_failure(e, command="sweep")
        raise
    distributed.mark_done()
    from symbol_tuning.evaluation.reporting import is_process_zero

    if is_process_zero():
        print(f"symbol_tuning.sweep: wrote {os.path.join(args.output_dir, 'table.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

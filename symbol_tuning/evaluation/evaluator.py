"""The evaluator: rank classification in the paper's four settings (+ flipped labels) and exact-match
generation, over an eval suite (evaluation.suites), and evaluation of every step of a training directory.

For every dataset and setting a prompt is built for every query (pure functions of seed and index, so
every host builds the same prompts) and scored by evaluation.scoring; the prediction is the argmax option.
Each record keeps the raw option scores (summed log-likelihoods, the headline `accuracy`) and the
length-normalised ones (mean log-likelihood per option token, `accuracy_length_normalized`), with the
option token counts, so every number in a table can be recomputed from the records.

"flipped" is the paper's flipped-label setting on binary datasets: natural labels, no instruction,
exemplar and query labels swapped (chance 50%).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from symbol_tuning.data.prompts import (
    INSTRUCTION_PLACEMENTS,
    SETTINGS,
    Prompt,
    build_eval_prompt,
    build_generative_prompt,
    check_instruction_placement,
    utf8_length,
)
from symbol_tuning.data.token_layout import token_layout, token_length_fn
from symbol_tuning.evaluation import checkpoint_loading, reporting
from symbol_tuning.evaluation.scoring import (
    MIN_OPTION_BUCKET,
    MIN_PROMPT_BUCKET,
    bucket,
    decode_prompts,
    score_prompts,
    tokenize_options,
    tokenize_prompts,
)
from symbol_tuning.evaluation.suites import EvalDataset, EvalSuite, GenerativeTask, chance_accuracy
from symbol_tuning.models.base import BaseModel
from symbol_tuning.training import checkpoints, storage
from symbol_tuning.training.checkpoint_integrity import DamagedCheckpointError

log = logging.getLogger(__name__)

FLIPPED = "flipped"
EVAL_SETTINGS = SETTINGS + (FLIPPED,)
GENERATIVE = "generative"


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How an evaluation runs: the `settings` (all of EVAL_SETTINGS when None), the prompts' `seed`,
    `k_per_class` exemplars, the model's `max_input_length`, `batch_size` prompts per scoring call and
    the smallest padded prompt length (`min_prompt_bucket`; max_input_length gives a single shape).
    `allow_empty_datasets`: a dataset with no queries is reported as missing in the tables instead of
    failing the evaluation (it is never averaged in silently). `instruction_placement` (one of
    prompts.INSTRUCTION_PLACEMENTS): the instruction once before the exemplars ("header") or before every
    exemplar and the query ("every_exemplar", the paper's Figure 1); recorded in every record and summary."""

    settings: tuple[str, ...] | None = None
    seed: int = 0
    k_per_class: int = 4
    max_input_length: int = 2048
    batch_size: int = 8
    min_prompt_bucket: int = MIN_PROMPT_BUCKET
    allow_empty_datasets: bool = False
    instruction_placement: str = INSTRUCTION_PLACEMENTS[0]

    def __post_init__(self):
        object.__setattr__(self, "settings", check_settings(self.settings))
        check_instruction_placement(self.instruction_placement)
        for name in ("k_per_class", "max_input_length", "batch_size", "min_prompt_bucket"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass
class EvalResult:
    """Per-example records and the summary computed from them."""

    records: list[dict[str, Any]]
    summary: dict[str, Any]


def check_settings(settings: Sequence[str] | None) -> tuple[str, ...]:
    """The settings to run (all of EVAL_SETTINGS by default); unknown names raise ValueError listing the valid."""
    if settings is None:
        return EVAL_SETTINGS
    unknown = [s for s in settings if s not in EVAL_SETTINGS]
    if unknown or not settings:
        raise ValueError(f"unknown evaluation settings {unknown or list(settings)}; valid: {', '.join(EVAL_SETTINGS)}")
    return tuple(settings)


def _prompt_length_fn(model: BaseModel, vocabulary) -> Callable[[str], int]:
    """A prompt text's length in tokens, with the special tokens the family's layout adds around it."""
    reserved, length = token_layout(model.family, vocabulary).reserved, token_length_fn(vocabulary)
    return lambda text: length(text) + reserved


def build_dataset_prompts(dataset: EvalDataset, setting: str, *, seed: int, k_per_class: int,
                          max_input_length: int, length_fn: Callable[[str], int] = utf8_length,
                          instruction_placement: str = INSTRUCTION_PLACEMENTS[0]) -> list[Prompt]:
    """One prompt per query of `dataset` in `setting` (FLIPPED: labels_only with flipped labels)."""
    flipped = setting == FLIPPED
    return [build_eval_prompt(dataset.queries, dataset.exemplars, setting="labels_only" if flipped else setting,
                              seed=seed, index=i, k_per_class=k_per_class, flipped=flipped,
                              max_input_length=max_input_length, length_fn=length_fn,
                              instruction_placement=instruction_placement, pools=dataset.pools)
            for i in range(len(dataset.queries.examples))]


def _records(prompts: Sequence[Prompt], scores: Sequence[np.ndarray], option_ids: Sequence[Sequence[Sequence[int]]],
             dataset: str, setting: str, instruction_placement: str) -> list[dict]:
    """One record per prompt: summed and length-normalised option scores with their argmax predictions."""
    records = []
    for p, row, ids in zip(prompts, scores, option_ids):
        lengths = np.asarray([len(o) for o in ids], np.float64)
        normalized = np.asarray(row, np.float64) / lengths  # mean log-likelihood per option token
        prediction, prediction_norm = int(np.argmax(row)), int(np.argmax(normalized))
        records.append({"dataset": dataset, "setting": setting, "index": p.index, "answer": p.answer,
                        "prediction": prediction, "correct": prediction == p.answer,
                        "scores": [float(s) for s in row], "option_lengths": [int(n) for n in lengths],
                        "scores_length_normalized": [float(s) for s in normalized],
                        "prediction_length_normalized": prediction_norm,
                        "correct_length_normalized": prediction_norm == p.answer, "num_classes": len(p.options),
                        "num_exemplars": p.num_exemplars, "format": p.format_name, "options": list(p.options),
                        "instruction_placement": instruction_placement})
    return records


def evaluate_classification(model: BaseModel, params: Any, work: Sequence[tuple[EvalDataset, str]], *, vocabulary,
                            options: EvalOptions = EvalOptions(), mesh=None) -> list[dict[str, Any]]:
    """Records (raw scores, prediction, answer, correct, ...) for every query of each (dataset, setting),
    all prompts built first (so bad input fails before compute) and scored together."""
    length_fn = _prompt_length_fn(model, vocabulary)
    built = [(d, s, build_dataset_prompts(d, s, seed=options.seed, k_per_class=options.k_per_class,
                                          max_input_length=options.max_input_length, length_fn=length_fn,
                                          instruction_placement=options.instruction_placement))
             for d, s in work]
    prompts = [p for _, _, ps in built for p in ps]
    prompt_ids = tokenize_prompts(model, vocabulary, [p.inputs for p in prompts],
                                  max_input_length=options.max_input_length)
    option_ids = tokenize_options(model, vocabulary, [p.options for p in prompts])
    scores = score_prompts(model, params, prompt_ids, option_ids, batch_size=options.batch_size, mesh=mesh,
                           min_prompt_bucket=options.min_prompt_bucket)
    records, at = [], 0
    for dataset, setting, ps in built:
        records.extend(_records(ps, scores[at:at + len(ps)], option_ids[at:at + len(ps)], dataset.name, setting,
                                options.instruction_placement))
        at += len(ps)
    return records


def _generative_prompts(task: GenerativeTask, *, seed: int, max_input_length: int,
                        length_fn: Callable[[str], int]) -> list[tuple[str, str]]:
    if task.shots == 0:
        return [(ex.inputs, ex.targets) for ex in task.data.examples]
    out = []
    for i in range(len(task.data.examples)):
        p = build_generative_prompt(task.data, seed=seed, index=i, shots=task.shots,
                                    max_input_length=max_input_length, length_fn=length_fn)
        out.append((p.inputs, p.targets))
    return out


def evaluate_generative(model: BaseModel, params: Any, tasks: Sequence[GenerativeTask], *, vocabulary,
                        options: EvalOptions = EvalOptions(), mesh=None) -> list[dict[str, Any]]:
    """Greedy KV-cache decoding of every query of every task; correct = exact match after stripping
    whitespace. One decode length (the longest target + EOS, bucketed) serves all tasks."""
    length_fn = _prompt_length_fn(model, vocabulary)
    items = [(task.name, i, prompt, target) for task in tasks
             for i, (prompt, target) in enumerate(_generative_prompts(
                 task, seed=options.seed, max_input_length=options.max_input_length, length_fn=length_fn))]
    if not items:
        return []
    prompt_ids = tokenize_prompts(model, vocabulary, [it[2] for it in items],
                                  max_input_length=options.max_input_length)
    new_tokens = bucket(max(len(vocabulary.encode(it[3])) for it in items) + 1, MIN_OPTION_BUCKET)
    tokens = decode_prompts(model, params, prompt_ids, max_new_tokens=new_tokens, eos_id=vocabulary.eos_id,
                            batch_size=options.batch_size, mesh=mesh, min_prompt_bucket=options.min_prompt_bucket)
    outputs = [vocabulary.decode(row) for row in tokens]
    return [{"dataset": name, "setting": GENERATIVE, "index": index, "target": target, "output": output,
             "correct": output.strip() == target.strip()}
            for (name, index, _, target), output in zip(items, outputs)]


def _accuracies(hits: Mapping[tuple[str, str], list[bool]]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """(accuracy per setting and dataset, average over datasets per setting) from (setting, dataset) -> hits."""
    accuracy: dict[str, dict[str, float]] = {}
    for (setting, dataset), values in hits.items():
        accuracy.setdefault(setting, {})[dataset] = float(np.mean(values))
    return accuracy, {s: float(np.mean(list(per.values()))) for s, per in accuracy.items()}


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy per setting and dataset, the average over datasets per setting, the chance rows and the
    generative accuracies (per task and per task family), all as fractions in [0, 1]. Records with
    length-normalised predictions also give `accuracy_length_normalized` / `average_length_normalized`
    (`accuracy` stays the summed-score headline), and their `instruction_placement` is recorded."""
    classes: dict[str, int] = {}
    generative: dict[str, list[bool]] = {}
    hits: dict[tuple[str, str], list[bool]] = {}
    hits_norm: dict[tuple[str, str], list[bool]] = {}
    placements: set[str] = set()
    for r in records:
        if r["setting"] == GENERATIVE:
            generative.setdefault(r["dataset"], []).append(bool(r["correct"]))
            continue
        hits.setdefault((r["setting"], r["dataset"]), []).append(bool(r["correct"]))
        if "correct_length_normalized" in r:
            hits_norm.setdefault((r["setting"], r["dataset"]), []).append(bool(r["correct_length_normalized"]))
        if "instruction_placement" in r:
            placements.add(r["instruction_placement"])
        classes[r["dataset"]] = int(r["num_classes"])
    accuracy, average = _accuracies(hits)
    summary: dict[str, Any] = {"accuracy": accuracy, "average": average,
                               "num_examples": {f"{s}/{d}": len(v) for (s, d), v in hits.items()}}
    if hits_norm and hits_norm.keys() == hits.keys() and all(len(hits_norm[k]) == len(v) for k, v in hits.items()):
        summary["accuracy_length_normalized"], summary["average_length_normalized"] = _accuracies(hits_norm)
    if placements:
        summary["instruction_placement"] = placements.pop() if len(placements) == 1 else sorted(placements)
    if classes:
        summary["chance"] = chance_accuracy(list(classes.values()))
    if FLIPPED in accuracy:
        summary["flipped_chance"] = 0.5
    if generative:
        per_task = {name: float(np.mean(v)) for name, v in generative.items()}
        families: dict[str, list[float]] = {}
        for name, acc in per_task.items():
            families.setdefault(name.split("/", 1)[0], []).append(acc)
        summary["generative"] = per_task
        summary["generative_average"] = {f: float(np.mean(v)) for f, v in families.items()}
    return summary


def evaluate(model: BaseModel, params: Any, suite: EvalSuite, *, vocabulary, options: EvalOptions = EvalOptions(),
             mesh=None) -> EvalResult:
    """Every dataset of `suite` in every setting of `options` (FLIPPED only for binary datasets) and every
    generative task. A dataset with no queries raises ValueError naming it, or with
    options.allow_empty_datasets is listed under summary["missing"] (shown as "missing" in the tables)."""
    empty = [d.name for d in suite.datasets if not d.queries.examples]
    empty += [t.name for t in suite.generative if not t.data.examples]
    if empty and not options.allow_empty_datasets:
        raise ValueError(f"evaluation suite {suite.name!r}: datasets with no queries: {empty}; an average without "
                         "them would not be comparable (pass --allow_empty_datasets to report them as missing)")
    work = [(d, s) for d in suite.datasets for s in options.settings if s != FLIPPED or d.is_binary]
    records = evaluate_classification(model, params, work, vocabulary=vocabulary, options=options, mesh=mesh)
    records += evaluate_generative(model, params, suite.generative, vocabulary=vocabulary, options=options, mesh=mesh)
    summary = summarize(records)
    summary["instruction_placement"] = options.instruction_placement
    if empty:
        summary["missing"] = empty
    samples = {d.name: d.sample for d in suite.datasets if d.sample is not None}
    if samples:
        summary["query_samples"] = samples  # how --max_queries drew each dataset's queries
    return EvalResult(records=records, summary=summary)


def flat_metrics(summary: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
    """A summary as flat scalar metrics: eval/<setting>/<dataset>, eval/<setting>/average, eval/generative/..."""
    out = {}
    for setting, per in summary.get("accuracy", {}).items():
        for dataset, acc in per.items():
            out[f"{prefix}/{setting}/{dataset}"] = acc
    for setting, acc in summary.get("average", {}).items():
        out[f"{prefix}/{setting}/average"] = acc
    for name, acc in summary.get("generative", {}).items():
        out[f"{prefix}/generative/{name}"] = acc
    for family, acc in summary.get("generative_average", {}).items():
        out[f"{prefix}/generative/{family}/average"] = acc
    return out


def make_eval_fn(*, model: BaseModel, suite: EvalSuite, vocabulary, options: EvalOptions = EvalOptions(), mesh=None,
                 output_dir: str | None = None, label: str = "model") -> Callable[[Any, int], dict]:
    """eval_fn(params, step) -> flat metrics, for trainer.train(eval_fn=...): the same code path as the CLI.
    With output_dir, process 0 also writes each step's records and tables under output_dir/step_<N>."""

    def eval_fn(params: Any, step: int) -> dict[str, float]:
        result = evaluate(model, params, suite, vocabulary=vocabulary, options=options, mesh=mesh)
        if output_dir is not None:
            reporting.write_step_results(output_dir, step=int(step), records=result.records, summary=result.summary,
                                         model=label)
        return flat_metrics(result.summary)

    return eval_fn


def evaluate_all_checkpoints(model_dir: str, *, suite: EvalSuite, vocabulary, output_dir: str,
                             options: EvalOptions = EvalOptions(), model_config: Any = None, mesh=None, rules=None,
                             steps: Sequence[int] | None = None, label: str = "model") -> dict[int, dict]:
    """Evaluate every Orbax step of `model_dir` (or `steps`), skipping steps whose summary already exists
    in output_dir (T5X mode='all'); returns step -> summary for all steps (read back for skipped ones) and
    writes the across-step overview (results.csv / results.md / plots)."""
    available = checkpoints.finished_steps(model_dir)
    if not available:
        raise FileNotFoundError(f"{model_dir}: no Orbax checkpoint steps (<dir>/<step>/state) to evaluate")
    todo = available if steps is None else [int(s) for s in steps]
    missing = [s for s in todo if s not in available]
    if missing:
        raise FileNotFoundError(f"{model_dir}: no checkpoint for steps {missing}; available: {available}")
    out: dict[int, dict] = {}
    damaged: list[DamagedCheckpointError] = []
    for step in todo:
        if reporting.step_done(output_dir, step):
            log.info("step %d: results exist in %s, skipped", step, output_dir)
            out[step] = storage.read_json(os.path.join(reporting.step_dir(output_dir, step), reporting.STEP_SUMMARY))
            continue
        try:
            loaded = checkpoint_loading.load_for_eval(model_dir, model_config=model_config, step=step, mesh=mesh,
                                                      rules=rules)
        except DamagedCheckpointError as e:
            log.error("%s; skipped, going on with the other steps", e)
            damaged.append(e)
            continue
        result = evaluate(loaded.model, loaded.params, suite, vocabulary=vocabulary, options=options, mesh=mesh)
        reporting.write_step_results(output_dir, step=step, records=result.records, summary=result.summary,
                                     model=label)
        out[step] = result.summary
    reporting.write_overview(output_dir, out, model=label)
    if damaged:
        raise DamagedCheckpointError(damaged[0].step, damaged[0].path,
                                     f"{damaged[0].reason}; damaged steps skipped: {[e.step for e in damaged]}, "
                                     f"evaluated: {sorted(out)}")
    return out

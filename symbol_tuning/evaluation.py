"""The evaluator: rank classification in the paper's four settings (+ flipped labels) and exact-match
generation, over an eval suite (symbol_tuning.eval_suites).

For every dataset and setting a prompt is built for every query (pure functions of seed and index, so
every host builds the same prompts), tokenized (decoder-only: BOS first when the vocabulary has one;
encoder-decoder: inputs and options end with EOS, as SeqIO's default output features do), padded into
power-of-two buckets (so jit compiles few shapes) and scored with the model's shared-prefix
`score_options`; the prediction is the argmax option. Each record keeps the raw option scores, so every
number in a table can be recomputed from the records.

"flipped" is the paper's flipped-label setting on binary datasets: natural labels, no instruction,
exemplar and query labels swapped (chance 50%).

With a mesh, every host feeds its slice of each batch through partitioning.make_global_batch and the
scores are gathered back onto every host; params may be sharded jax arrays.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from symbol_tuning.eval_checkpoints import LoadedModel, evaluate_all_checkpoints, load_for_eval  # noqa: F401
from symbol_tuning.eval_suites import EvalDataset, EvalSuite, GenerativeTask, chance_accuracy
from symbol_tuning.metrics import Progress
from symbol_tuning.models.base import BaseModel
from symbol_tuning.prompts import SETTINGS, Prompt, build_eval_prompt, build_generative_prompt, utf8_length

__all__ = ["EVAL_SETTINGS", "FLIPPED", "GENERATIVE", "EvalResult", "LoadedModel", "check_settings", "evaluate",
           "evaluate_all_checkpoints", "evaluate_classification", "evaluate_generative", "flat_metrics",
           "load_for_eval", "make_eval_fn", "score_prompts", "summarize"]

FLIPPED = "flipped"
EVAL_SETTINGS = SETTINGS + (FLIPPED,)
GENERATIVE = "generative"
MIN_PROMPT_BUCKET = 64
MIN_OPTION_BUCKET = 8


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


def bucket(n: int, minimum: int) -> int:
    """The smallest power of two >= max(n, minimum)."""
    size = minimum
    while size < n:
        size *= 2
    return size


def _length_fn(vocabulary, reserved: int) -> Callable[[str], int]:
    if getattr(vocabulary, "name", "") == "bytes":
        return lambda text: utf8_length(text) + reserved
    return lambda text: len(vocabulary.encode(text)) + reserved


def _reserved(model: BaseModel, vocabulary) -> int:
    """Tokens added around the prompt text: EOS for encoder inputs, BOS for decoder-only prompts."""
    if model.family == "encoder_decoder":
        return 1
    return 1 if getattr(vocabulary, "bos_id", None) is not None else 0


def build_dataset_prompts(dataset: EvalDataset, setting: str, *, seed: int, k_per_class: int,
                          max_input_length: int, length_fn: Callable[[str], int] = utf8_length) -> list[Prompt]:
    """One prompt per query of `dataset` in `setting` (FLIPPED: labels_only with flipped labels)."""
    flipped = setting == FLIPPED
    return [build_eval_prompt(dataset.queries, dataset.exemplars, setting="labels_only" if flipped else setting,
                              seed=seed, index=i, k_per_class=k_per_class, flipped=flipped,
                              max_input_length=max_input_length, length_fn=length_fn)
            for i in range(len(dataset.queries.examples))]


def tokenize_prompts(model: BaseModel, vocabulary, texts: Sequence[str], *, max_input_length: int) -> list[list[int]]:
    """Prompt token ids as the model family expects them; a prompt over max_input_length raises ValueError."""
    add_bos = model.family == "decoder_only" and getattr(vocabulary, "bos_id", None) is not None
    ids = vocabulary.encode_batch(list(texts), add_bos=add_bos)
    if model.family == "encoder_decoder":
        ids = [row + [vocabulary.eos_id] for row in ids]
    for i, row in enumerate(ids):
        if len(row) > max_input_length:
            raise ValueError(f"prompt {i}: {len(row)} tokens exceed max_input_length={max_input_length}")
    return ids


def tokenize_options(model: BaseModel, vocabulary, options: Sequence[Sequence[str]]) -> list[list[list[int]]]:
    """Option token ids per prompt; encoder-decoder options end with EOS (a target as trained)."""
    eos = [vocabulary.eos_id] if model.family == "encoder_decoder" else []
    return [[row + eos for row in vocabulary.encode_batch(list(opts))] for opts in options]


def _pad(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


_JIT_CACHE: dict[tuple, Callable] = {}


def _jitted(model: BaseModel, what: str) -> Callable:
    """One jitted function per (model class, config): checkpoints of one shape reuse the compilations."""
    try:
        key = (type(model), model.config, what)
        hash(key)
    except TypeError:
        key = (id(model), what)
    if key not in _JIT_CACHE:
        if len(_JIT_CACHE) >= 16:
            _JIT_CACHE.clear()
        _JIT_CACHE[key] = (jax.jit(model.score_options) if what == "score"
                           else jax.jit(model.decode, static_argnames=("max_new_tokens", "eos_id")))
    return _JIT_CACHE[key]


def _run_global(arrays: Mapping[str, np.ndarray], mesh) -> Mapping[str, Any]:
    """Feed a global batch (the same on every host) through make_global_batch when a mesh is given."""
    if mesh is None:
        return arrays
    from symbol_tuning.partitioning import make_global_batch

    count, index = jax.process_count(), jax.process_index()
    rows = next(iter(arrays.values())).shape[0]
    if rows % count:
        raise ValueError(f"eval batch of {rows} rows does not split over {count} hosts")
    per = rows // count
    return make_global_batch({k: v[index * per:(index + 1) * per] for k, v in arrays.items()}, mesh)


def _to_host(x: Any) -> np.ndarray:
    if jax.process_count() > 1 and not getattr(x, "is_fully_addressable", True):
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def score_prompts(model: BaseModel, params: Any, prompt_ids: Sequence[Sequence[int]],
                  option_ids: Sequence[Sequence[Sequence[int]]], *, batch_size: int = 8, mesh=None,
                  min_prompt_bucket: int = MIN_PROMPT_BUCKET) -> list[np.ndarray]:
    """Summed option log-likelihoods (one [K_i] array per prompt) for prompts with any number of options.

    Options are padded to the largest K (empty options, dropped from the result) and one option length;
    prompts are grouped by power-of-two length bucket, so a whole suite compiles a few shapes only.
    """
    if not prompt_ids:
        return []
    k = max(len(opts) for opts in option_ids)
    lo = bucket(max(len(o) for opts in option_ids for o in opts), MIN_OPTION_BUCKET)
    fn = _jitted(model, "score")
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(prompt_ids):
        groups.setdefault(bucket(len(row), min_prompt_bucket), []).append(i)
    out: list[np.ndarray | None] = [None] * len(prompt_ids)
    progress = Progress(sum(-(-len(m) // batch_size) for m in groups.values()), desc="eval")
    for lp, members in sorted(groups.items()):
        for start, stop in _batches(len(members), batch_size):
            rows = members[start:stop] + [members[start]] * (batch_size - (stop - start))
            prompts = _pad([prompt_ids[i] for i in rows], lp)
            lengths = np.asarray([len(prompt_ids[i]) for i in rows], np.int32)
            options = np.stack([_pad(list(option_ids[i]) + [[]] * (k - len(option_ids[i])), lo) for i in rows])
            option_lengths = np.asarray([[len(o) for o in option_ids[i]] + [0] * (k - len(option_ids[i]))
                                         for i in rows], np.int32)
            batch = _run_global({"p": prompts, "pl": lengths, "o": options, "ol": option_lengths}, mesh)
            scores = _to_host(fn(params, batch["p"], batch["pl"], batch["o"], batch["ol"]))
            for j, i in enumerate(members[start:stop]):
                out[i] = scores[j, :len(option_ids[i])].astype(np.float32)
            progress.update(1)
    progress.close()
    return out  # type: ignore[return-value]


def _prompts_for(model: BaseModel, dataset: EvalDataset, setting: str, *, vocabulary, seed: int,
                 k_per_class: int, max_input_length: int) -> list[Prompt]:
    reserved = _reserved(model, vocabulary)
    return build_dataset_prompts(dataset, setting, seed=seed, k_per_class=k_per_class,
                                 max_input_length=max_input_length, length_fn=_length_fn(vocabulary, reserved))


def _records(prompts: Sequence[Prompt], scores: Sequence[np.ndarray], dataset: str, setting: str) -> list[dict]:
    records = []
    for p, row in zip(prompts, scores):
        prediction = int(np.argmax(row))
        records.append({"dataset": dataset, "setting": setting, "index": p.index, "answer": p.answer,
                        "prediction": prediction, "correct": prediction == p.answer,
                        "scores": [float(s) for s in row], "num_classes": len(p.options),
                        "num_exemplars": p.num_exemplars, "format": p.format_name, "options": list(p.options)})
    return records


def evaluate_classification(model: BaseModel, params: Any, work: Sequence[tuple[EvalDataset, str]], *, vocabulary,
                            seed: int = 0, k_per_class: int = 4, max_input_length: int = 2048, batch_size: int = 8,
                            mesh=None, min_prompt_bucket: int = MIN_PROMPT_BUCKET) -> list[dict[str, Any]]:
    """Records (raw scores, prediction, answer, correct, ...) for every query of each (dataset, setting),
    all prompts built first (so bad input fails before compute) and scored together."""
    built = [(d, s, _prompts_for(model, d, s, vocabulary=vocabulary, seed=seed, k_per_class=k_per_class,
                                 max_input_length=max_input_length)) for d, s in work]
    prompts = [p for _, _, ps in built for p in ps]
    prompt_ids = tokenize_prompts(model, vocabulary, [p.inputs for p in prompts], max_input_length=max_input_length)
    option_ids = tokenize_options(model, vocabulary, [p.options for p in prompts])
    scores = score_prompts(model, params, prompt_ids, option_ids, batch_size=batch_size, mesh=mesh,
                           min_prompt_bucket=min_prompt_bucket)
    records, at = [], 0
    for dataset, setting, ps in built:
        records.extend(_records(ps, scores[at:at + len(ps)], dataset.name, setting))
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


def evaluate_generative(model: BaseModel, params: Any, tasks: Sequence[GenerativeTask], *, vocabulary, seed: int = 0,
                        max_input_length: int = 2048, batch_size: int = 8, mesh=None,
                        min_prompt_bucket: int = MIN_PROMPT_BUCKET) -> list[dict[str, Any]]:
    """Greedy KV-cache decoding of every query of every task; correct = exact match after stripping
    whitespace. One decode length (the longest target + EOS, bucketed) serves all tasks."""
    reserved = _reserved(model, vocabulary)
    items = [(task.name, i, prompt, target) for task in tasks
             for i, (prompt, target) in enumerate(_generative_prompts(
                 task, seed=seed, max_input_length=max_input_length, length_fn=_length_fn(vocabulary, reserved)))]
    if not items:
        return []
    prompt_ids = tokenize_prompts(model, vocabulary, [it[2] for it in items], max_input_length=max_input_length)
    new_tokens = bucket(max(len(vocabulary.encode(it[3])) for it in items) + 1, MIN_OPTION_BUCKET)
    fn = _jitted(model, "decode")
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(prompt_ids):
        groups.setdefault(bucket(len(row), min_prompt_bucket), []).append(i)
    outputs: list[str] = [""] * len(items)
    for lp, members in sorted(groups.items()):
        for start, stop in _batches(len(members), batch_size):
            rows = members[start:stop] + [members[start]] * (batch_size - (stop - start))
            batch = _run_global({"p": _pad([prompt_ids[i] for i in rows], lp),
                                 "pl": np.asarray([len(prompt_ids[i]) for i in rows], np.int32)}, mesh)
            tokens = _to_host(fn(params, batch["p"], batch["pl"], max_new_tokens=new_tokens,
                                 eos_id=vocabulary.eos_id))
            for j, i in enumerate(members[start:stop]):
                outputs[i] = vocabulary.decode(tokens[j])
    return [{"dataset": name, "setting": GENERATIVE, "index": index, "target": target, "output": output,
             "correct": output.strip() == target.strip()}
            for (name, index, _, target), output in zip(items, outputs)]


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy per setting and dataset, the average over datasets per setting, the chance rows and the
    generative accuracies (per task and per task family), all as fractions in [0, 1]."""
    accuracy: dict[str, dict[str, float]] = {}
    classes: dict[str, int] = {}
    generative: dict[str, list[bool]] = {}
    hits: dict[tuple[str, str], list[bool]] = {}
    for r in records:
        if r["setting"] == GENERATIVE:
            generative.setdefault(r["dataset"], []).append(bool(r["correct"]))
            continue
        hits.setdefault((r["setting"], r["dataset"]), []).append(bool(r["correct"]))
        classes[r["dataset"]] = int(r["num_classes"])
    for (setting, dataset), values in hits.items():
        accuracy.setdefault(setting, {})[dataset] = float(np.mean(values))
    average = {s: float(np.mean(list(per.values()))) for s, per in accuracy.items()}
    summary: dict[str, Any] = {"accuracy": accuracy, "average": average,
                               "num_examples": {f"{s}/{d}": len(v) for (s, d), v in hits.items()}}
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


def evaluate(model: BaseModel, params: Any, suite: EvalSuite, *, vocabulary, settings: Sequence[str] | None = None,
             seed: int = 0, k_per_class: int = 4, max_input_length: int = 2048, batch_size: int = 8,
             mesh=None, min_prompt_bucket: int = MIN_PROMPT_BUCKET) -> EvalResult:
    """Every dataset of `suite` in every setting (FLIPPED only for binary datasets) and every generative task.

    min_prompt_bucket: the smallest padded prompt length; set it to max_input_length for a single shape.
    """
    settings = check_settings(settings)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    work = [(d, s) for d in suite.datasets for s in settings if s != FLIPPED or d.is_binary]
    common = dict(vocabulary=vocabulary, seed=seed, max_input_length=max_input_length, batch_size=batch_size,
                  mesh=mesh, min_prompt_bucket=min_prompt_bucket)
    records = evaluate_classification(model, params, work, k_per_class=k_per_class, **common)
    records += evaluate_generative(model, params, suite.generative, **common)
    return EvalResult(records=records, summary=summarize(records))


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


def make_eval_fn(*, model: BaseModel, suite: EvalSuite, vocabulary, settings: Sequence[str] | None = None,
                 seed: int = 0, k_per_class: int = 4, max_input_length: int = 2048, batch_size: int = 8,
                 mesh=None, min_prompt_bucket: int = MIN_PROMPT_BUCKET, output_dir: str | None = None,
                 label: str = "model") -> Callable[[Any, int], dict]:
    """eval_fn(params, step) -> flat metrics, for trainer.train(eval_fn=...): the same code path as the CLI.
    With output_dir, process 0 also writes each step's records and tables under output_dir/step_<N>."""
    settings = check_settings(settings)

    def eval_fn(params: Any, step: int) -> dict[str, float]:
        result = evaluate(model, params, suite, vocabulary=vocabulary, settings=settings, seed=seed,
                          k_per_class=k_per_class, max_input_length=max_input_length, batch_size=batch_size,
                          mesh=mesh, min_prompt_bucket=min_prompt_bucket)
        if output_dir is not None:
            from symbol_tuning.reporting import write_step_results

            write_step_results(output_dir, step=int(step), records=result.records, summary=result.summary,
                               model=label)
        return flat_metrics(result.summary)

    return eval_fn

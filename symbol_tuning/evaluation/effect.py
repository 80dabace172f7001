"""The reproduction's effect: arm accuracies, paired differences with 95% intervals, the plateau gate.

Input: per-prompt evaluation records (evaluator.evaluate's `records`) for each arm and seed. Every arm
of one seed is scored on the same prompts (same dataset, setting, index and prompt seed), so the
differences are paired.

- An arm's accuracy in a setting is the mean over seeds of the mean over datasets of the dataset's
  accuracy (the paper's Table 1 averages datasets).
- A difference (arm minus arm) is the same mean of per-prompt differences of `correct`.
- Its 95% interval is a percentile cluster bootstrap over seeds and prompts (RESAMPLES draws): each draw
  takes S seeds with replacement, then, for each drawn seed and each dataset (in name order), that
  dataset's prompts with replacement; the statistic is the same mean. The generator is
  numpy.random.default_rng(zlib.crc32("<setting>/<name>")), seeds drawn as integers(S, size=(RESAMPLES, S)),
  then per dataset integers(n, size=(RESAMPLES, S, n)); so anyone can recompute it from the records.
- The plateau gate: the symbol-tuned model's mean loss (-log p of the right symbol) on held-out
  symbol-tuning prompts against the plateau, log(number of classes), where a model that only picks one
  of the shown symbols sits. It left the plateau when the loss is below PLATEAU_FRACTION of that level.
"""
from __future__ import annotations

import math
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from symbol_tuning.evaluation import reporting
from symbol_tuning.evaluation.reporting import SETTING_TITLES

ARMS = ("baseline", "symbol_tuned", "control")
COMPARISONS = {"diff_vs_baseline": ("symbol_tuned", "baseline"), "diff_vs_control": ("symbol_tuned", "control")}
RESAMPLES = 2000
PLATEAU_FRACTION = 0.5

Records = Sequence[Mapping[str, Any]]


def _correct_table(records: Records, setting: str) -> dict[str, dict[int, float]]:
    """{dataset: {index: correct}} for one setting."""
    out: dict[str, dict[int, float]] = {}
    for r in records:
        if r["setting"] == setting:
            out.setdefault(r["dataset"], {})[int(r["index"])] = float(bool(r["correct"]))
    return out


def _paired(per_seed: Sequence[Mapping[str, Records]], setting: str, left: str, right: str | None
            ) -> list[list[np.ndarray]]:
    """[seed][dataset in name order] -> per-prompt values (left's correct, minus right's when given)."""
    out = []
    for seed_index, arms in enumerate(per_seed):
        a = _correct_table(arms[left], setting)
        b = _correct_table(arms[right], setting) if right else None
        rows = []
        for dataset in sorted(a):
            if b is not None and set(a[dataset]) != set(b.get(dataset, {})):
                raise ValueError(f"seed #{seed_index} setting {setting!r} dataset {dataset!r}: arms {left!r} and "
                                 f"{right!r} were scored on different prompts, so they cannot be paired")
            idx = sorted(a[dataset])
            values = np.array([a[dataset][i] for i in idx])
            if b is not None:
                values = values - np.array([b[dataset][i] for i in idx])
            rows.append(values)
        out.append(rows)
    datasets = {len(rows) for rows in out}
    if len(datasets) != 1:
        raise ValueError(f"setting {setting!r}: seeds cover different numbers of datasets {sorted(datasets)}")
    return out


def _mean(values: list[list[np.ndarray]]) -> float:
    return float(np.mean([np.mean([v.mean() for v in rows]) for rows in values]))


def bootstrap_interval(values: list[list[np.ndarray]], *, key: str, resamples: int = RESAMPLES) -> list[float]:
    """The percentile 95% interval of `_mean` under the cluster bootstrap described in the module doc."""
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    num_seeds = len(values)
    seeds = rng.integers(num_seeds, size=(resamples, num_seeds))
    total = np.zeros(resamples)
    num_datasets = len(values[0])
    for d in range(num_datasets):
        n = len(values[0][d])
        picks = rng.integers(n, size=(resamples, num_seeds, n))
        stacked = np.stack([values[s][d] for s in range(num_seeds)])  # [seed, prompt]
        drawn = stacked[seeds[:, :, None], picks]  # [resample, drawn seed, prompt]
        total += drawn.mean(axis=2).mean(axis=1)
    stats = total / num_datasets
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return [float(lo), float(hi)]


def plateau(symbol_losses: Sequence[float], num_classes: Sequence[int]) -> dict[str, Any]:
    """The plateau gate from per-seed mean losses on held-out symbol-tuning prompts."""
    level = float(np.mean([math.log(c) for c in num_classes]))
    loss = float(np.mean(symbol_losses))
    return {"symbol_loss": loss, "left_plateau": bool(loss < PLATEAU_FRACTION * level), "plateau_level": level,
            "threshold": PLATEAU_FRACTION * level, "per_seed": [float(x) for x in symbol_losses]}


def compute_effect(per_seed: Sequence[Mapping[str, Records]], settings: Sequence[str], *,
                   plateau_gate: Mapping[str, Any], resamples: int = RESAMPLES) -> dict[str, Any]:
    """effect.json's content: per setting each arm's accuracy (and its interval), both paired differences
    with their 95% intervals; the number of seeds; the plateau gate."""
    if not per_seed:
        raise ValueError("compute_effect: no seeds")
    out: dict[str, Any] = {"seeds": len(per_seed), "settings": {}, "plateau": dict(plateau_gate),
                           "interval": {"method": "percentile cluster bootstrap over seeds, then prompts within "
                                                  "each dataset and seed", "resamples": resamples, "level": 0.95}}
    for setting in settings:
        entry: dict[str, Any] = {}
        intervals = {}
        for arm in ARMS:
            values = _paired(per_seed, setting, arm, None)
            entry[arm] = _mean(values)
            intervals[arm] = bootstrap_interval(values, key=f"{setting}/{arm}", resamples=resamples)
        prompts = sum(len(v) for v in values[0])
        for name, (left, right) in COMPARISONS.items():
            values = _paired(per_seed, setting, left, right)
            entry[name] = {"mean": _mean(values),
                           "ci95": bootstrap_interval(values, key=f"{setting}/{name}", resamples=resamples)}
        entry["accuracy_ci95"] = intervals
        entry["num_prompts_per_seed"] = int(prompts)
        out["settings"][setting] = entry
    return out


def per_dataset_accuracy(per_seed: Sequence[Mapping[str, Records]], setting: str, arm: str) -> dict[str, float]:
    """{dataset: accuracy averaged over seeds} for one arm and setting."""
    acc: dict[str, list[float]] = {}
    for arms in per_seed:
        for dataset, hits in _correct_table(arms[arm], setting).items():
            acc.setdefault(dataset, []).append(float(np.mean(list(hits.values()))))
    return {d: float(np.mean(v)) for d, v in sorted(acc.items())}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _interval(ci: Sequence[float]) -> str:
    return f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


ARM_TITLES = {"baseline": "instruction-tuned (baseline)", "control": "control (more instruction tuning)",
              "symbol_tuned": "symbol-tuned"}


def table1_markdown(effect: Mapping[str, Any]) -> str:
    """The paper's Table 1 layout: one row per arm, one column per setting, then the paired differences with
    their 95% intervals, or, when the symbol-tuned model never left the plateau, a line saying so."""
    settings = list(effect["settings"])
    head = "| model | " + " | ".join(SETTING_TITLES.get(s, s) for s in settings) + " |"
    lines = [head, "|" + "---|" * (len(settings) + 1)]
    for arm in ARMS:
        cells = [_pct(effect["settings"][s][arm]) for s in settings]
        lines.append(f"| {ARM_TITLES[arm]} | " + " | ".join(cells) + " |")
    gate = effect["plateau"]
    if gate["left_plateau"]:
        for name, (left, right) in COMPARISONS.items():
            diffs = [effect["settings"][s][name] for s in settings]
            cells = [f"{100 * d['mean']:+.1f} {_interval(d['ci95'])}" for d in diffs]
            lines.append(f"| {left} - {right} (95% CI) | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    verdict = ("left the plateau" if gate["left_plateau"] else
               "did NOT leave the plateau, so this run says nothing about symbol tuning's effect and no "
               "difference is reported")
    text += (f"\nPlateau gate: the symbol-tuned model's loss on held-out symbol-tuning prompts is "
             f"{gate['symbol_loss']:.3f} (plateau log(classes) = {gate['plateau_level']:.3f}, threshold "
             f"{gate['threshold']:.3f}): it {verdict}.\n")
    return text


def per_dataset_markdown(per_seed: Sequence[Mapping[str, Records]], settings: Sequence[str]) -> str:
    """Accuracy per held-out dataset and arm (averaged over seeds), one column per setting."""
    head = "| dataset | model | " + " | ".join(SETTING_TITLES.get(s, s) for s in settings) + " |"
    lines = [head, "|" + "---|" * (len(settings) + 2)]
    tables = {(arm, s): per_dataset_accuracy(per_seed, s, arm) for arm in ARMS for s in settings}
    datasets = sorted({d for t in tables.values() for d in t})
    for dataset in datasets:
        for arm in ARMS:
            cells = [_pct(tables[(arm, s)][dataset]) if dataset in tables[(arm, s)] else "-" for s in settings]
            lines.append(f"| {dataset} | {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_rows(effect: Mapping[str, Any], chance: float) -> list[dict[str, Any]]:
    """Rows for reporting.plot_setting_bars: one bar per arm and setting with its 95% interval."""
    rows = []
    for setting, entry in effect["settings"].items():
        for arm in ARMS:
            lo, hi = entry["accuracy_ci95"][arm]
            rows.append({"model": ARM_TITLES[arm], "setting": setting, "accuracy": entry[arm], "ci_low": lo,
                         "ci_high": hi, "chance": 0.5 if setting == "flipped" else chance})
    return rows


def plot_effect(effect: Mapping[str, Any], path: str, *, chance: float) -> None:
    """Grouped bars per setting (one per arm) with 95% intervals and the chance line (reporting's plot)."""
    gate = effect["plateau"]
    state = "left the plateau" if gate["left_plateau"] else "never left the plateau: no effect can be read"
    reporting.plot_setting_bars(plot_rows(effect, chance), path,
                                title=f"Held-out families, {effect['seeds']} seeds, 95% intervals; the symbol-tuned "
                                      f"model {state} (probe loss {gate['symbol_loss']:.2f})")

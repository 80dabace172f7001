"""Result files and figures as pure functions of result records: JSONL, CSV, Markdown (per-setting
summaries and the paper's Table 1 layout) and matplotlib PNGs (Agg backend, no display needed).

Row records used by tables and plots are flat dicts with at least model, setting and accuracy (a
fraction); sweeps add variant ("baseline" / "tuned"), step and k_per_class. Files are written to a
temporary name and renamed, so a reader never sees half a file; only process 0 writes.
"""
from __future__ import annotations

import csv
import io
import json
import os
import textwrap
from typing import Any, Iterable, Mapping, Sequence

import jax

from symbol_tuning.training import storage

SETTING_TITLES = {"instr_labels": "instr + labels", "labels_only": "labels only", "instr_only": "instr only",
                  "neither": "neither", "flipped": "flipped labels"}
STEP_SUMMARY = "summary.json"


def is_process_zero() -> bool:
    """True on the host that writes files."""
    return jax.process_index() == 0


def _atomic_write(path: str, text: str) -> None:
    """The whole file at once: a local rename or one GCS object write (training.storage)."""
    storage.write_text(path, text)


def write_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> None:
    """All records, one JSON object a line (replacing the file)."""
    _atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def append_jsonl(path: str, record: Mapping[str, Any]) -> None:
    """Append one record as one whole line and fsync it (resumable logs; see sweep_records)."""
    from symbol_tuning.evaluation import sweep_records

    sweep_records.append_record(path, record)


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Records of a JSONL file; a torn last line (a killed writer) is left out, any other bad line raises."""
    from symbol_tuning.evaluation import sweep_records

    return sweep_records.read_records(path, repair=False)


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV with a header; columns default to the union of keys in first-seen order."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()})
    return buf.getvalue()


def write_csv(path: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    _atomic_write(path, csv_text(rows, columns))


def summary_rows(summary: Mapping[str, Any], *, model: str, **extra: Any) -> list[dict[str, Any]]:
    """One row per (setting, dataset) plus an "average" row per setting, and one per generative task; with the
    length-normalised accuracy and the instruction placement where the summary has them."""
    rows = []
    if "instruction_placement" in summary:
        extra = {**extra, "instruction_placement": summary["instruction_placement"]}
    normalized = summary.get("accuracy_length_normalized", {})
    normalized_average = summary.get("average_length_normalized", {})
    for setting, per in summary.get("accuracy", {}).items():
        for dataset, acc in per.items():
            rows.append({"model": model, **extra, "setting": setting, "dataset": dataset, "accuracy": acc,
                         **_present("accuracy_length_normalized", normalized.get(setting, {}).get(dataset))})
        rows.append({"model": model, **extra, "setting": setting, "dataset": "average",
                     "accuracy": summary["average"][setting], "chance": chance_for(summary, setting),
                     **_present("accuracy_length_normalized", normalized_average.get(setting))})
    for name, acc in summary.get("generative", {}).items():
        rows.append({"model": model, **extra, "setting": "generative", "dataset": name, "accuracy": acc})
    return rows


def _present(key: str, value: Any) -> dict[str, Any]:
    return {} if value is None else {key: value}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def summary_markdown(summary: Mapping[str, Any], *, title: str = "") -> str:
    """Rows: datasets, then average and chance; columns: settings. Generative tasks in a second table."""
    acc = summary.get("accuracy", {})
    settings = list(acc)
    datasets = list(dict.fromkeys(d for per in acc.values() for d in per))
    missing = list(summary.get("missing", ()))
    lines = [f"## {title}", ""] if title else []
    if missing and not settings:
        lines += ["| dataset | result |", "|---|---|"] + [f"| {d} | missing (no queries) |" for d in missing] + [""]
    if settings:
        lines.append("| dataset | " + " | ".join(SETTING_TITLES.get(s, s) for s in settings) + " |")
        lines.append("|---|" + "---|" * len(settings))
        for d in datasets:
            lines.append(f"| {d} | " + " | ".join(_pct(acc[s].get(d)) for s in settings) + " |")
        for d in missing:
            lines.append(f"| {d} | " + " | ".join("missing (no queries)" for _ in settings) + " |")
        average_of = f" (of {len(datasets)}; {len(missing)} missing)" if missing else ""
        lines.append(f"| **average**{average_of} | " + " | ".join(_pct(summary["average"][s]) for s in settings) + " |")
        chance = [summary.get("flipped_chance") if s == "flipped" else summary.get("chance") for s in settings]
        lines.append("| chance | " + " | ".join(_pct(c) for c in chance) + " |")
        lines.append("")
    if summary.get("generative"):
        lines += ["| generative task | exact match |", "|---|---|"]
        lines += [f"| {n} | {_pct(a)} |" for n, a in summary["generative"].items()]
        lines += [f"| **{f} average** | {_pct(a)} |" for f, a in summary.get("generative_average", {}).items()]
        lines.append("")
    return "\n".join(lines)


def table1_markdown(rows: Sequence[Mapping[str, Any]], *, settings: Sequence[str] | None = None) -> str:
    """The paper's Table 1 layout: one row per model, one column per setting, cells
    "baseline -> tuned (+change)" in percent from rows with variant "baseline" / "tuned" (a model with
    only one variant shows that value alone). Rows must hold one accuracy per (model, variant, setting)."""
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["setting"]), {})[r.get("variant", "tuned")] = r["accuracy"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    settings = list(settings) if settings is not None else list(dict.fromkeys(r["setting"] for r in rows))
    lines = ["| model | " + " | ".join(SETTING_TITLES.get(s, s) for s in settings) + " |",
             "|---|" + "---|" * len(settings)]
    for m in models:
        out = []
        for s in settings:
            cell = cells.get((m, s), {})
            base, tuned = cell.get("baseline"), cell.get("tuned")
            if base is not None and tuned is not None:
                out.append(f"{_pct(base)} -> {_pct(tuned)} ({100 * (tuned - base):+.1f})")
            else:
                out.append(_pct(base if base is not None else tuned))
        lines.append(f"| {m} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chance_for(summary: Mapping[str, Any], setting: str) -> float | None:
    """Random guessing's accuracy in `setting`: the mean of 1 / classes over the datasets, 50% flipped."""
    if setting == "flipped":
        return summary.get("flipped_chance", 0.5)
    return summary.get("chance")


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINESTYLES = ("-", "--", "-.", ":")


def _panels(rows: Sequence[Mapping[str, Any]], panel_key: str | None) -> list[tuple[Any, list]]:
    if panel_key is None:
        return [(None, list(rows))]
    keys = sorted({r.get(panel_key) for r in rows}, key=lambda k: (k is None, k))
    return [(k, [r for r in rows if r.get(panel_key) == k]) for k in keys]


def _panel_title(panel_key: str | None, key: Any) -> str:
    if panel_key == "k_per_class":
        return f"k = {key} exemplar{'s' if key != 1 else ''} per class"
    return "" if panel_key is None else f"{panel_key} = {key}"


def _chance_line(ax, xs_by_value: Mapping[float, list[tuple[float, float]]], labelled: list) -> None:
    """Dashed random-guessing segments over the x-spans where each chance value applies (one legend entry)."""
    for value, spans in xs_by_value.items():
        for lo, hi in spans:
            ax.hlines(100 * value, lo, hi, colors="black", linestyles="dashed", linewidth=1,
                      label=None if labelled else "random guessing")
            labelled.append(True)


def plot_setting_bars(rows: Sequence[Mapping[str, Any]], path: str, *, title: str = "Accuracy by prompt setting",
                      panel_key: str | None = None) -> None:
    """Grouped bars: one group per prompt setting, one bar per model (or model/variant), each bar labelled
    with its value; error bars where rows carry "ci_low" / "ci_high"; a dashed line at random guessing where
    rows carry "chance"; one panel per value of `panel_key` (e.g. "k_per_class"). A missing (model, setting)
    shows no bar, never a 0."""
    plt = _pyplot()
    panels = _panels(rows, panel_key)
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    labels = list(dict.fromkeys(_series(r) for r in rows))
    width = 0.8 / max(len(labels), 1)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6, 1.7 * len(settings)) * len(panels), 4.4),
                             sharey=True, squeeze=False)
    for ax, (key, mine) in zip(axes[0], panels):
        value = {(_series(r), r["setting"]): 100 * r["accuracy"] for r in mine if r.get("accuracy") is not None}
        value_ci = {(_series(r), r["setting"]): (100 * r["ci_low"], 100 * r["ci_high"]) for r in mine
                    if r.get("accuracy") is not None and r.get("ci_low") is not None}
        for i, label in enumerate(labels):
            shown = [s for s in settings if (label, s) in value]
            pts = [(settings.index(s) + i * width, value[(label, s)]) for s in shown]
            if not pts:
                continue
            errors = None
            if all((label, s) in value_ci for s in shown):
                errors = [[value[(label, s)] - value_ci[(label, s)][0] for s in shown],
                          [value_ci[(label, s)][1] - value[(label, s)] for s in shown]]
            bars = ax.bar([x for x, _ in pts], [v for _, v in pts], width, label=label, yerr=errors, capsize=3)
            ax.bar_label(bars, fmt="%.0f", fontsize="x-small", padding=1)
        chance: dict[float, list[tuple[float, float]]] = {}
        for j, s in enumerate(settings):
            values = {r["chance"] for r in mine if r["setting"] == s and r.get("chance") is not None}
            for c in values:
                chance.setdefault(float(c), []).append((j - width / 2, j + width * (len(labels) - 0.5)))
        _chance_line(ax, chance, [])
        ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(settings))])
        ax.set_xticklabels([SETTING_TITLES.get(s, s) for s in settings])
        ax.set_xlabel("prompt setting")
        ax.set_ylim(0, 105)
        ax.set_title(_panel_title(panel_key, key), fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    rows_below = _figure_legend(fig, axes[0])
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 11)))  # ~11 title chars per inch
    _save(fig, path, plt, legend_rows=rows_below)


def plot_accuracy_vs_step(rows: Sequence[Mapping[str, Any]], path: str, *, title: str = "Accuracy vs training step",
                          panel_key: str | None = None) -> None:
    """One line per prompt setting: accuracy against training step (rows need a numeric step), each line
    with its own marker and dash so lines that coincide stay visible; random guessing dashed where rows
    carry "chance"; one panel per value of `panel_key`."""
    plt = _pyplot()
    panels = _panels(rows, panel_key)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), sharey=True, squeeze=False)
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    for ax, (key, mine) in zip(axes[0], panels):
        steps = sorted({int(r["step"]) for r in mine})
        for n, setting in enumerate(settings):
            points = sorted((int(r["step"]), 100 * r["accuracy"]) for r in mine if r["setting"] == setting)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=_MARKERS[n % len(_MARKERS)],
                        linestyle=_LINESTYLES[n % len(_LINESTYLES)], markersize=7 - n % 3, alpha=0.85,
                        label=SETTING_TITLES.get(setting, setting))
        chances = {float(r["chance"]) for r in mine if r.get("chance") is not None and r["setting"] != "flipped"}
        if chances and steps:
            _chance_line(ax, {c: [(steps[0], steps[-1])] for c in chances}, [])
        ax.set_xlabel("training step")
        ax.set_ylim(0, 105)
        ax.set_title(_panel_title(panel_key, key), fontsize="medium")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    rows_below = _figure_legend(fig, axes[0])
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 11)))  # ~11 title chars per inch
    _save(fig, path, plt, legend_rows=rows_below)


def _series(r: Mapping[str, Any]) -> str:
    return f"{r['model']} ({r['variant']})" if r.get("variant") else str(r["model"])


def _figure_legend(fig, axes) -> int:
    """One legend for all panels, below them, so it never hides a bar or a line; returns its rows."""
    handles, names = [], []
    for ax in axes:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    longest = max((len(n) for n in names), default=1)
    ncol = max(1, min(len(names), int(fig.get_figwidth() * 13 // (longest + 6))))  # ~13 small chars per inch
    fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize="small", frameon=False)
    return -(-len(names) // ncol)


def _save(fig, path: str, plt, *, legend_rows: int = 0) -> None:
    buf = io.BytesIO()
    fig.tight_layout(rect=(0, 0.02 + 0.06 * legend_rows, 1, 1) if legend_rows else None)
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    target = storage.resolve(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if storage.is_remote(path):
        target.write_bytes(buf.getvalue())
        return
    tmp = path + ".tmp.png"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def step_dir(output_dir: str, step: int | None) -> str:
    return os.path.join(output_dir, "final" if step is None else f"step_{int(step)}")


def step_done(output_dir: str, step: int | None) -> bool:
    """Whether a step's results are complete (its summary.json, written last, exists)."""
    return storage.resolve(os.path.join(step_dir(output_dir, step), STEP_SUMMARY)).is_file()


def write_step_results(output_dir: str, *, step: int | None, records: Sequence[Mapping[str, Any]],
                       summary: Mapping[str, Any], model: str = "model") -> str | None:
    """records.jsonl, summary.csv, summary.md and (last, as the completion marker) summary.json of one
    evaluated checkpoint under output_dir/step_<N> (or /final); nothing on hosts other than process 0."""
    if not is_process_zero():
        return None
    directory = step_dir(output_dir, step)
    write_jsonl(os.path.join(directory, "records.jsonl"), records)
    write_csv(os.path.join(directory, "summary.csv"), summary_rows(summary, model=model, step=step))
    _atomic_write(os.path.join(directory, "summary.md"),
                  summary_markdown(summary, title=f"{model}" + ("" if step is None else f" step {step}")))
    _atomic_write(os.path.join(directory, STEP_SUMMARY), json.dumps({"step": step, "model": model, **summary},
                                                                    indent=2, sort_keys=True))
    return directory


def write_overview(output_dir: str, per_step: Mapping[int | None, Mapping[str, Any]], *, model: str = "model") -> None:
    """Across evaluated steps: results.csv (average per setting and step), results.md, a bar plot of the
    last step and, with two or more steps, accuracy-vs-step lines. Process 0 only."""
    if not is_process_zero() or not per_step:
        return
    rows = [{"model": model, "step": step, "setting": s, "accuracy": acc, "chance": chance_for(summary, s),
             "accuracy_length_normalized": summary.get("average_length_normalized", {}).get(s),
             "instruction_placement": summary.get("instruction_placement")}
            for step, summary in per_step.items() for s, acc in summary.get("average", {}).items()]
    write_csv(os.path.join(output_dir, "results.csv"), rows, ["model", "step", "setting", "instruction_placement",
                                                              "accuracy", "accuracy_length_normalized", "chance"])
    last = list(per_step)[-1]
    _atomic_write(os.path.join(output_dir, "results.md"),
                  "\n".join(summary_markdown(s, title=f"{model} " + ("final" if k is None else f"step {k}"))
                            for k, s in per_step.items()))
    if rows:
        count = len(next(iter(per_step[last].get("accuracy", {}).values()), {}))
        at = "final" if last is None else f"step {last}"
        plot_setting_bars([r for r in rows if r["step"] == last], os.path.join(output_dir, "settings.png"),
                          title=f"{model} at {at}: average accuracy over {count} datasets per prompt setting")
        stepped = [r for r in rows if r["step"] is not None]
        if len({r["step"] for r in stepped}) >= 2:
            plot_accuracy_vs_step(stepped, os.path.join(output_dir, "accuracy_vs_step.png"),
                                  title=f"{model}: average accuracy over {count} datasets vs training step")

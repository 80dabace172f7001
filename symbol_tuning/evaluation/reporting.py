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
    """One row per (setting, dataset) plus an "average" row per setting, and one per generative task."""
    rows = []
    for setting, per in summary.get("accuracy", {}).items():
        for dataset, acc in per.items():
            rows.append({"model": model, **extra, "setting": setting, "dataset": dataset, "accuracy": acc})
        rows.append({"model": model, **extra, "setting": setting, "dataset": "average",
                     "accuracy": summary["average"][setting]})
    for name, acc in summary.get("generative", {}).items():
        rows.append({"model": model, **extra, "setting": "generative", "dataset": name, "accuracy": acc})
    return rows


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


def plot_setting_bars(rows: Sequence[Mapping[str, Any]], path: str, *, title: str = "Accuracy by setting") -> None:
    """Grouped bars: one group per setting, one bar per model (or model/variant)."""
    plt = _pyplot()
    labels = list(dict.fromkeys(_series(r) for r in rows))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    value = {(_series(r), r["setting"]): 100 * r["accuracy"] for r in rows}
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(settings)), 4))
    for i, label in enumerate(labels):
        xs = [j + i * width for j in range(len(settings))]
        ax.bar(xs, [value.get((label, s), 0.0) for s in settings], width, label=label)
    ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(settings))])
    ax.set_xticklabels([SETTING_TITLES.get(s, s) for s in settings])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize="small")
    _save(fig, path, plt)


def plot_accuracy_vs_step(rows: Sequence[Mapping[str, Any]], path: str, *, title: str = "Accuracy vs step") -> None:
    """One line per setting: accuracy against training step (rows need a numeric step)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for setting in dict.fromkeys(r["setting"] for r in rows):
        points = sorted((int(r["step"]), 100 * r["accuracy"]) for r in rows if r["setting"] == setting)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=SETTING_TITLES.get(setting, setting))
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    _save(fig, path, plt)


def _series(r: Mapping[str, Any]) -> str:
    return f"{r['model']} ({r['variant']})" if r.get("variant") else str(r["model"])


def _save(fig, path: str, plt) -> None:
    buf = io.BytesIO()
    fig.tight_layout()
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
    rows = [{"model": model, "step": step, "setting": s, "accuracy": acc}
            for step, summary in per_step.items() for s, acc in summary.get("average", {}).items()]
    write_csv(os.path.join(output_dir, "results.csv"), rows, ["model", "step", "setting", "accuracy"])
    last = list(per_step)[-1]
    _atomic_write(os.path.join(output_dir, "results.md"),
                  "\n".join(summary_markdown(s, title=f"{model} " + ("final" if k is None else f"step {k}"))
                            for k, s in per_step.items()))
    if rows:
        plot_setting_bars([r for r in rows if r["step"] == last], os.path.join(output_dir, "settings.png"))
        stepped = [r for r in rows if r["step"] is not None]
        if len({r["step"] for r in stepped}) >= 2:
            plot_accuracy_vs_step(stepped, os.path.join(output_dir, "accuracy_vs_step.png"))

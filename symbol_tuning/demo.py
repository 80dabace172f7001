"""`symbol-tuning demo`: the paper's experiment in miniature on this machine, offline, with error bars.

For each seed: (a) instruction-tune a tiny word-level decoder from scratch on the reproduction's natural
families (the stand-in for a Flan checkpoint: it learns their instructions and label words); then, from
that baseline, (b) symbol-tune it on the synthetic families' symbol prompts and (c) tune a control for
the same steps on instruction data only. Every arm is evaluated on the held-out families in the four
settings and with flipped labels, on the same prompts, plus a plateau probe (held-out symbol-tuning
prompts). Finally effect.json (accuracies, paired differences with 95% intervals, the plateau gate),
table.md (Table 1 layout, per-family table) and effect.png are written. Each (seed, arm) runs in its own
single-threaded worker process, `--workers` at a time; a stopped run resumes when rerun on its
--run_dir, and a stage that did not finish is never reported.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

ARMS = ("baseline", "symbol_tuned", "control")
# Named sizes; explicit flags win. "cpu": the README's first command, <= 10 minutes on a 2-core machine with
# every seed; "gpu": one GPU (larger model, budget, seeds), not yet timed on one.
SIZES = {
    "cpu": {},
    "gpu": dict(seeds=5, d_model=128, num_layers=4, instruction_steps=300, symbol_steps=5000, batch_size=256,
                eval_queries=100, workers=1, threads=0),
}
# Single-threaded XLA on one ISA level: the same seed gives the same numbers on any x86-64 machine with AVX2,
# whatever its core count (XLA's CPU code and reduction order depend on both otherwise).
REPRODUCIBLE_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1 --xla_cpu_max_isa=AVX2"
DONE = "DONE.json"
PLATEAU_QUERIES = 8


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="symbol-tuning demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--run_dir", default=None,
                   help="where everything is written (default: ./runs/demo-<time>); rerun on it to resume")
    p.add_argument("--size", default="cpu", choices=sorted(SIZES),
                   help="named defaults: cpu (a 2-core machine, <= 10 min) or gpu (one GPU, larger model and budget)")
    p.add_argument("--seeds", type=int, default=3, help="independent seeds (each: baseline, symbol-tuned, control)")
    p.add_argument("--d_model", type=int, default=64)
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument("--instruction_steps", type=int, default=60, help="steps of stage (a), the baseline")
    p.add_argument("--symbol_steps", type=int, default=200,
                   help="steps of stage (b), symbol tuning; the control arm trains as many")
    p.add_argument("--symbol_rate", type=int, default=100, choices=(50, 80, 100),
                   help="percent of symbol data in stage (b) (the rest instruction data); 100 as in Table 1")
    p.add_argument("--batch_size", type=int, default=64, help="packed rows per step")
    p.add_argument("--learning_rate", type=float, default=3e-3)
    p.add_argument("--input_length", type=int, default=128, help="prompt tokens (word-level)")
    p.add_argument("--eval_queries", type=int, default=40, help="queries per held-out family and setting")
    p.add_argument("--workers", type=int, default=2, help="worker processes at a time (one per core)")
    p.add_argument("--threads", type=int, default=1,
                   help="XLA threads per worker: 1 is reproducible across machines; 0 lets XLA choose")
    p.add_argument("--seed", type=int, default=0, help="the first seed; seeds are seed .. seed + seeds - 1")
    p.add_argument("--unit", default=None, help=argparse.SUPPRESS)
    return p


def _write_json(path: str, value: Any) -> None:
    from symbol_tuning.training import storage

    storage.write_text(path, json.dumps(value, indent=2))


def _read_json(path: str) -> Any:
    from symbol_tuning.training import storage

    return storage.read_json(path)


# ---------------------------------------------------------------------------------------------- worker side
def _model(cfg: dict):
    from symbol_tuning.train import build_model

    heads = max(1, cfg["d_model"] // 16)
    return build_model(family="decoder_only", preset="tiny", overrides=dict(
        vocab_size=cfg["vocab_size"], d_model=cfg["d_model"], num_heads=heads, num_kv_heads=heads,
        head_dim=cfg["d_model"] // heads, d_ff=2 * cfg["d_model"], num_layers=cfg["num_layers"],
        max_position_embeddings=cfg["input_length"] + 8, dtype="float32", dropout_rate=0.0))


def _train(cfg: dict, model, *, mixture: str, steps: int, model_dir: str, init: str | None, seed: int):
    import functools

    from symbol_tuning.train import train
    from symbol_tuning.training import optimizers, partitioning

    warmup = min(100, steps // 5)
    return train(model=model, mixture_or_task_name=mixture, model_dir=model_dir, train_steps=steps,
                 batch_size=cfg["batch_size"], feature_lengths={"inputs": cfg["input_length"], "targets": 4},
                 vocabulary=cfg["vocabulary"], pack=True, seed=seed, checkpoint_every=max(steps // 4, 1),
                 keep_checkpoints=1, log_every=max(steps // 10, 1),
                 optimizer=functools.partial(optimizers.make_optimizer, name="adamw", max_grad_norm=1.0),
                 learning_rate_fn=optimizers.make_schedule(kind="constant", base_learning_rate=cfg["learning_rate"],
                                                           warmup_steps=warmup),
                 mesh_config=partitioning.MeshConfig(ici_data=-1), init_checkpoint=init)


def _plateau_suite():
    """Held-out prompts of the symbol-tuning families with tuning symbols: the trained task, unseen texts."""
    from symbol_tuning.data.embedded import lexicons
    from symbol_tuning.data.symbols import SymbolPools
    from symbol_tuning.evaluation.suites import EvalDataset, suite_from_data

    pools = lexicons.reproduction_pools()
    as_eval = SymbolPools(tuning=pools.tuning, evaluation=pools.tuning)
    datasets = [EvalDataset(name=f.name, pools=as_eval,
                            queries=lexicons.lexicon_classification(f, split="eval", num_examples=PLATEAU_QUERIES),
                            exemplars=lexicons.lexicon_classification(f, split="train", num_examples=64))
                for f in lexicons.synthetic_families()]
    return suite_from_data("plateau", datasets)


def _evaluate(cfg: dict, model, params, *, seed: int, out_dir: str) -> dict:
    import numpy as np

    from symbol_tuning.data.vocabularies import get_vocabulary
    from symbol_tuning.evaluation import reporting
    from symbol_tuning.evaluation.evaluator import EVAL_SETTINGS, EvalOptions, evaluate
    from symbol_tuning.evaluation.suites import build_suite

    vocabulary = get_vocabulary(cfg["vocabulary"])
    options = EvalOptions(settings=EVAL_SETTINGS, seed=seed, k_per_class=4, max_input_length=cfg["input_length"],
                          batch_size=64, min_prompt_bucket=cfg["input_length"])
    suite = build_suite("reproduction", max_queries=cfg["eval_queries"], seed=0)
    result = evaluate(model, params, suite, vocabulary=vocabulary, options=options)
    reporting.write_step_results(out_dir, step=None, records=result.records, summary=result.summary,
                                 model=cfg["unit_label"])
    probe = evaluate(model, params, _plateau_suite(), vocabulary=vocabulary,
                     options=dataclasses.replace(options, settings=("neither",)))
    losses = [-r["scores"][r["answer"]] for r in probe.records]
    plateau = {"symbol_loss": float(np.mean(losses)), "accuracy": float(np.mean([r["correct"] for r in probe.records])),
               "num_prompts": len(losses), "num_classes": sorted({int(r["num_classes"]) for r in probe.records})}
    reporting.write_jsonl(os.path.join(out_dir, "plateau_records.jsonl"), probe.records)
    return plateau


def run_unit(spec: dict) -> int:
    """One (seed, arm): train it (resuming a stopped run), save its weights, evaluate it; DONE.json last."""
    import jax

    from symbol_tuning.models.native_io import save_native

    cfg, seed, arm, unit_dir = spec["config"], spec["seed"], spec["arm"], spec["dir"]
    model = _model(cfg)
    native = os.path.join(unit_dir, "native")
    start = time.time()
    if arm == "baseline":
        mixture, steps, init = "reproduction_instructions", cfg["instruction_steps"], None
    else:
        mixture = f"reproduction_symbol_{cfg['symbol_rate']}" if arm == "symbol_tuned" else "reproduction_instructions"
        steps, init = cfg["symbol_steps"], spec["init"]
    result = _train(cfg, model, mixture=mixture, steps=steps, model_dir=os.path.join(unit_dir, "train"), init=init,
                    seed=seed + (0 if arm == "baseline" else 1000))
    if result.step < steps:
        print(f"demo worker seed {seed} {arm}: stopped at step {result.step} of {steps}", file=sys.stderr)
        return 3
    if not os.path.exists(os.path.join(native, "config.json")):
        tmp = native + ".tmp"
        if os.path.exists(tmp):
            import shutil

            shutil.rmtree(tmp)
        save_native(model.config, jax.device_get(result.state.params), tmp)
        os.replace(tmp, native)
    train_s = time.time() - start
    cfg = {**cfg, "unit_label": f"{arm} (seed {seed})"}
    plateau = _evaluate(cfg, model, result.state.params, seed=seed, out_dir=os.path.join(unit_dir, "eval"))
    _write_json(os.path.join(unit_dir, DONE), {
        "seed": seed, "arm": arm, "steps": steps, "train_loss": result.last_metrics.get("train/loss"),
        "plateau": plateau, "train_and_save_s": round(train_s, 1), "wall_s": round(time.time() - start, 1)})
    return 0


# ---------------------------------------------------------------------------------------------- parent side
class _Stopped(Exception):
    pass


def _units(args, run_dir: str, config: dict) -> list[dict]:
    units = []
    for seed in range(args.seed, args.seed + args.seeds):
        base = os.path.join(run_dir, f"seed_{seed}", "baseline")
        units.append({"seed": seed, "arm": "baseline", "dir": base, "needs": None, "config": config})
        for arm in ("symbol_tuned", "control"):
            units.append({"seed": seed, "arm": arm, "dir": os.path.join(run_dir, f"seed_{seed}", arm),
                          "needs": base, "init": os.path.join(base, "native"), "config": config})
    return units


def _done(unit_dir: str) -> bool:
    return os.path.isfile(os.path.join(unit_dir, DONE))


def _worker_env(threads: int) -> dict:
    """Each worker is one single-device process: a simulated device count from the caller is dropped."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    if threads == 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + REPRODUCIBLE_XLA_FLAGS).strip()
    elif threads > 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" intra_op_parallelism_threads={threads}").strip()
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def _schedule(units: list[dict], *, workers: int, threads: int) -> None:
    """Run the units not yet done, `workers` at a time, each after the unit it needs; stop all on SIGTERM."""
    pending = [u for u in units if not _done(u["dir"])]
    running: dict[subprocess.Popen, dict] = {}
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while pending or running:
            if stop["signal"] is not None:
                for proc in running:
                    proc.send_signal(signal.SIGTERM)
                names = [f"seed {u['seed']} {u['arm']}" for u in running.values()]
                for proc in running:
                    proc.wait()
                raise _Stopped(f"stopped by signal {stop['signal']} during: {', '.join(names) or 'scheduling'}")
            ready = sorted((u for u in pending if u["needs"] is None or _done(u["needs"])),
                           key=lambda u: (u["arm"] != "baseline", u["seed"]))  # baselines first: they unlock arms
            while ready and len(running) < workers:
                unit = ready.pop(0)
                pending.remove(unit)
                os.makedirs(unit["dir"], exist_ok=True)
                log = open(os.path.join(unit["dir"], "worker.log"), "a", encoding="utf-8")
                spec = {k: v for k, v in unit.items() if k != "needs"}
                proc = subprocess.Popen([sys.executable, "-m", "symbol_tuning.demo", "--unit", json.dumps(spec)],
                                        stdout=log, stderr=subprocess.STDOUT, env=_worker_env(threads))
                log.close()
                running[proc] = unit
                print(f"  started seed {unit['seed']} {unit['arm']}", flush=True)
            for proc in [p for p in running if p.poll() is not None]:
                unit = running.pop(proc)
                if proc.returncode != 0 or not _done(unit["dir"]):
                    for other in running:
                        other.send_signal(signal.SIGTERM)
                    for other in running:
                        other.wait()
                    tail = open(os.path.join(unit["dir"], "worker.log"), encoding="utf-8").read()[-3000:]
                    raise RuntimeError(f"seed {unit['seed']} {unit['arm']} failed (exit {proc.returncode}); "
                                       f"log {unit['dir']}/worker.log ends:\n{tail}")
                done = _read_json(os.path.join(unit["dir"], DONE))
                print(f"  finished seed {unit['seed']} {unit['arm']} in {done['wall_s']:.0f}s "
                      f"(probe loss {done['plateau']['symbol_loss']:.3f}, "
                      f"probe accuracy {100 * done['plateau']['accuracy']:.0f}%)", flush=True)
            time.sleep(0.2)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _report(args, run_dir: str, units: list[dict], wall_s: float) -> str:
    from symbol_tuning.evaluation import effect, reporting
    from symbol_tuning.evaluation.evaluator import EVAL_SETTINGS

    per_seed: list[dict] = []
    losses, classes = [], []
    for seed in range(args.seed, args.seed + args.seeds):
        arms = {}
        for unit in (u for u in units if u["seed"] == seed):
            arms[unit["arm"]] = reporting.read_jsonl(os.path.join(unit["dir"], "eval", "final", "records.jsonl"))
            if unit["arm"] == "symbol_tuned":
                done = _read_json(os.path.join(unit["dir"], DONE))
                losses.append(done["plateau"]["symbol_loss"])
                classes += done["plateau"]["num_classes"]
        per_seed.append(arms)
    result = effect.compute_effect(per_seed, list(EVAL_SETTINGS), plateau_gate=effect.plateau(losses, classes))
    result["wall_time_s"] = round(wall_s, 1)
    result["config"] = {k: v for k, v in vars(args).items() if k not in ("unit", "run_dir")}
    chance = 0.5
    effect.plot_effect(result, os.path.join(run_dir, "effect.png"), chance=chance)
    table = effect.table1_markdown(result)
    per_family = effect.per_dataset_markdown(per_seed, list(EVAL_SETTINGS))
    text = (f"# symbol-tuning demo\n\nword-level decoder, d_model {args.d_model}, {args.num_layers} layers; "
            f"{args.seeds} seeds; {args.instruction_steps} instruction steps, then {args.symbol_steps} steps of "
            f"symbol tuning ({args.symbol_rate}% symbol data) or of control instruction tuning; "
            f"{args.eval_queries} queries per held-out family and setting; chance {100 * chance:.0f}%; "
            f"wall time {wall_s / 60:.1f} min\n\nAverage accuracy (%) over the held-out families and seeds; "
            f"differences in points with 95% intervals:\n\n{table}\nPer family (%):\n\n{per_family}")
    from symbol_tuning.training import storage

    _write_json(os.path.join(run_dir, "effect.json"), result)
    storage.write_text(os.path.join(run_dir, "table.md"), text)
    return text


def run(args: argparse.Namespace) -> str:
    """Run every (seed, arm) not yet done, then write effect.json, table.md and effect.png; return the run dir."""
    from symbol_tuning.data.embedded import lexicons
    from symbol_tuning.data.vocabularies import write_word_level_tokenizer

    run_dir = args.run_dir
    os.makedirs(run_dir, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("unit", "run_dir", "workers")}
    saved = os.path.join(run_dir, "demo_config.json")
    if os.path.exists(saved) and _read_json(saved) != settings:
        raise ValueError(f"{saved}: this run directory was started with other settings "
                         f"({_read_json(saved)}); use a new --run_dir or the same flags to resume")
    _write_json(saved, settings)
    for stale in ("effect.json", "table.md"):
        if os.path.exists(os.path.join(run_dir, stale)):
            os.remove(os.path.join(run_dir, stale))  # rewritten only once every unit is done
    t0 = time.time()
    words = lexicons.vocabulary_words()
    tokenizer = write_word_level_tokenizer(words, os.path.join(run_dir, "vocabulary"))
    config = {"vocabulary": f"hf:{tokenizer}", "vocab_size": -(-(len(words) + 3) // 64) * 64,
              **{k: getattr(args, k) for k in ("d_model", "num_layers", "instruction_steps", "symbol_steps",
                                               "symbol_rate", "batch_size", "learning_rate", "input_length",
                                               "eval_queries")}}
    units = _units(args, run_dir, config)
    print(f"symbol-tuning demo: {args.seeds} seeds x {len(ARMS)} arms, word-level decoder (d_model {args.d_model}, "
          f"{args.num_layers} layers, vocabulary {len(words) + 3} words), run directory {run_dir}", flush=True)
    _schedule(units, workers=args.workers, threads=args.threads)
    text = _report(args, run_dir, units, time.time() - t0)
    print(f"\n{text}")
    return run_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    known, _ = parser.parse_known_args(argv)
    if known.unit is not None:
        return run_unit(json.loads(known.unit))
    parser.set_defaults(**SIZES[known.size])
    args = parser.parse_args(argv)
    for flag in ("seeds", "instruction_steps", "symbol_steps", "batch_size", "input_length", "eval_queries",
                 "d_model", "num_layers", "workers"):
        if getattr(args, flag) < 1:
            print(f"symbol-tuning demo: --{flag} must be >= 1, got {getattr(args, flag)}", file=sys.stderr)
            return 2
    if args.threads < 0:
        print(f"symbol-tuning demo: --threads must be >= 0, got {args.threads}", file=sys.stderr)
        return 2
    args.run_dir = os.path.abspath(args.run_dir or os.path.join("runs", time.strftime("demo-%Y%m%d-%H%M%S")))
    try:
        run_dir = run(args)
    except _Stopped as e:
        print(f"symbol-tuning demo: {e}; no result was written. Rerun with the same flags and "
              f"--run_dir={args.run_dir} to resume.", file=sys.stderr)
        return 143
    except (RuntimeError, ValueError) as e:
        print(f"symbol-tuning demo: {e}", file=sys.stderr)
        return 1
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

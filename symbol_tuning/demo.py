"""`symbol-tuning demo`: the paper's experiment in miniature on this machine, offline.

(a) instruction-tune a tiny byte-level model from scratch on the generated instruction task families
(the stand-in for a Flan checkpoint); (b) symbol-tune that checkpoint on the generated symbol mixture
(symbol data mixed with instruction data); (c) evaluate both on the held-out generated families in
the four settings (instructions yes/no x natural labels / evaluation-pool symbols) and with flipped
labels; (d) print the paper's Table 1 comparison and write plots. Every artefact (checkpoints,
TensorBoard logs, results, plots) lands under one run directory, named on the last line.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any, Sequence

from symbol_tuning.evaluation import reporting
from symbol_tuning.evaluation.evaluator import EVAL_SETTINGS, EvalOptions
from symbol_tuning.models.families import FAMILIES, init_shapes
from symbol_tuning.training import optimizers, partitioning

MODEL_LABEL = "byte-level {family} ({params:.1f}M params)"
# Named sizes: "cpu" fits 10 minutes on a 2-core laptop CPU; "gpu" is the larger toy reproduction
# meant for one H100-class GPU within about 10 minutes (not yet timed on one). Explicit flags win.
SIZES = {
    "cpu": {},
    "gpu": dict(d_model=512, num_layers=6, instruction_steps=3000, symbol_steps=1500, batch_size=64,
                input_length=1024, eval_queries=100, instruction_learning_rate=3e-3),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="symbol-tuning demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--run_dir", default=None, help="where everything is written (default: ./runs/demo-<time>)")
    p.add_argument("--size", default="cpu", choices=sorted(SIZES),
                   help="named defaults: cpu (a 2-core laptop, ~8 min) or gpu (one GPU, larger model and budget)")
    p.add_argument("--family", default="encoder_decoder", choices=tuple(FAMILIES))
    p.add_argument("--d_model", type=int, default=64)
    p.add_argument("--num_layers", type=int, default=2, help="layers (per stack for the encoder-decoder)")
    p.add_argument("--instruction_steps", type=int, default=250, help="steps of stage (a)")
    p.add_argument("--symbol_steps", type=int, default=150, help="steps of stage (b)")
    p.add_argument("--symbol_rate", type=int, default=50, choices=(16, 33, 50, 66, 83, 100),
                   help="percent of symbol-tuning data in stage (b)'s mixture (the rest is instruction data)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--input_length", type=int, default=512, help="prompt tokens (bytes); longer prompts drop exemplars")
    p.add_argument("--target_length", type=int, default=32)
    p.add_argument("--instruction_learning_rate", type=float, default=1e-2)
    p.add_argument("--symbol_learning_rate", type=float, default=3e-3)
    p.add_argument("--eval_queries", type=int, default=40, help="queries per held-out family and setting")
    p.add_argument("--k_per_class", type=int, default=EvalOptions.k_per_class)
    p.add_argument("--seed", type=int, default=0)
    return p


def _model(args: argparse.Namespace):
    from symbol_tuning.train import build_model

    heads = max(1, args.d_model // 32)
    if args.family == "encoder_decoder":
        overrides = dict(vocab_size=384, d_model=args.d_model, num_heads=heads, d_kv=32, d_ff=2 * args.d_model,
                         num_encoder_layers=args.num_layers, num_decoder_layers=args.num_layers)
    else:
        overrides = dict(vocab_size=384, d_model=args.d_model, num_heads=heads, num_kv_heads=heads, head_dim=32,
                         d_ff=2 * args.d_model, num_layers=2 * args.num_layers,
                         max_position_embeddings=args.input_length + args.target_length)
    overrides.update(dtype="float32", dropout_rate=0.0)
    return build_model(family=args.family, preset="tiny", overrides=overrides)


def _train_stage(*, args, model, model_dir: str, mixture: str, steps: int, learning_rate: float,
                 init_checkpoint: str | None) -> Any:
    from symbol_tuning.train import train

    return train(model=model, mixture_or_task_name=mixture, model_dir=model_dir, train_steps=steps,
                 batch_size=args.batch_size,
                 feature_lengths={"inputs": args.input_length, "targets": args.target_length},
                 vocabulary="bytes", pack=True, seed=args.seed, checkpoint_every=max(steps // 2, 1),
                 keep_checkpoints=2, log_every=max(steps // 20, 1),
                 optimizer=functools.partial(optimizers.make_optimizer, name="adafactor"),
                 learning_rate_fn=optimizers.make_schedule(kind="constant", base_learning_rate=learning_rate),
                 mesh_config=partitioning.MeshConfig(ici_data=-1), init_checkpoint=init_checkpoint,
                 z_loss=1e-4)


def _evaluate(*, args, model, params, suite, label: str, out_dir: str) -> dict:
    from symbol_tuning.data.vocabularies import ByteVocabulary
    from symbol_tuning.evaluation.evaluator import evaluate

    start = time.time()
    options = EvalOptions(settings=EVAL_SETTINGS, seed=args.seed, k_per_class=args.k_per_class,
                          max_input_length=args.input_length, batch_size=32, min_prompt_bucket=args.input_length)
    result = evaluate(model, params, suite, vocabulary=ByteVocabulary(), options=options)
    reporting.write_step_results(out_dir, step=None, records=result.records, summary=result.summary, model=label)
    print(f"  evaluated {len(result.records)} prompts in {time.time() - start:.0f}s", flush=True)
    return result.summary


def run(args: argparse.Namespace) -> str:
    """Run the four stages and return the run directory."""
    import jax
    import numpy as np

    from symbol_tuning.evaluation.suites import build_suite, chance_accuracy
    from symbol_tuning.models.native_io import save_native

    run_dir = os.path.abspath(args.run_dir or os.path.join("runs", time.strftime("demo-%Y%m%d-%H%M%S")))
    os.makedirs(run_dir, exist_ok=True)
    t0 = time.time()
    model = _model(args)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(jax.eval_shape(
        lambda: model.get_initial_variables(jax.random.PRNGKey(0), init_shapes(model.family, 1, 8)))["params"]))
    label = MODEL_LABEL.format(family=args.family.replace("_", "-"), params=n_params / 1e6)
    print(f"symbol-tuning demo: {label}, run directory {run_dir}", flush=True)

    print(f"\n(a) instruction tuning from scratch: {args.instruction_steps} steps on 'embedded_symbol_0' "
          "(generated instruction families)", flush=True)
    base = _train_stage(args=args, model=model, model_dir=os.path.join(run_dir, "a_instruction_tuned"),
                        mixture="embedded_symbol_0", steps=args.instruction_steps,
                        learning_rate=args.instruction_learning_rate, init_checkpoint=None)
    base_ckpt = os.path.join(run_dir, "a_instruction_tuned", "native")
    if not os.path.exists(os.path.join(base_ckpt, "config.json")):
        save_native(model.config, jax.device_get(base.state.params), base_ckpt)

    mixture = f"embedded_symbol_{args.symbol_rate}"
    print(f"\n(b) symbol tuning: {args.symbol_steps} steps on '{mixture}' ({args.symbol_rate}% symbol data, "
          "starting from (a))", flush=True)
    tuned = _train_stage(args=args, model=model, model_dir=os.path.join(run_dir, "b_symbol_tuned"),
                         mixture=mixture, steps=args.symbol_steps, learning_rate=args.symbol_learning_rate,
                         init_checkpoint=base_ckpt)
    tuned_ckpt = os.path.join(run_dir, "b_symbol_tuned", "native")
    if not os.path.exists(os.path.join(tuned_ckpt, "config.json")):
        save_native(model.config, jax.device_get(tuned.state.params), tuned_ckpt)

    suite = build_suite("embedded", max_queries=args.eval_queries, seed=args.seed)
    print(f"\n(c) evaluation on {len(suite.datasets)} held-out families x {len(EVAL_SETTINGS)} settings "
          f"(flipped: binary families only), {args.eval_queries} queries each", flush=True)
    rows = []
    for variant, result, name in (("baseline", base, "instruction-tuned"), ("tuned", tuned, "symbol-tuned")):
        print(f"  {name} model:", flush=True)
        summary = _evaluate(args=args, model=model, params=result.state.params, suite=suite, label=name,
                            out_dir=os.path.join(run_dir, "c_eval", variant))
        rows += reporting.summary_rows(summary, model=label, variant=variant)

    averages = [r for r in rows if r["dataset"] == "average"]
    table = reporting.table1_markdown(averages, settings=list(EVAL_SETTINGS))
    chance = chance_accuracy(suite.datasets)
    per_dataset = _per_dataset_table(rows)
    reporting.write_csv(os.path.join(run_dir, "results.csv"), rows)
    reporting.write_jsonl(os.path.join(run_dir, "results.jsonl"), rows)
    reporting.plot_setting_bars(averages, os.path.join(run_dir, "accuracy_by_setting.png"),
                                title=f"Average accuracy over {len(suite.datasets)} held-out generated families "
                                      "per prompt setting: instruction-tuned vs symbol-tuned")
    wall = time.time() - t0
    text = (f"# symbol-tuning demo\n\n{label}; held-out generated families: {len(suite.datasets)}; "
            f"chance {100 * chance:.1f}%; wall time {wall / 60:.1f} min\n\n"
            f"Average accuracy (baseline -> symbol-tuned):\n\n{table}\nPer family:\n\n{per_dataset}")
    with open(os.path.join(run_dir, "table.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(run_dir, "demo_config.json"), "w", encoding="utf-8") as f:
        json.dump(vars(args), f, indent=2)
    print(f"\n(d) {text}")
    return run_dir


def _per_dataset_table(rows: list[dict]) -> str:
    per = [r for r in rows if r["dataset"] != "average" and r["setting"] in EVAL_SETTINGS]
    keyed = [{**r, "model": r["dataset"]} for r in per]
    return reporting.table1_markdown(keyed, settings=list(EVAL_SETTINGS))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    known, _ = parser.parse_known_args(argv)
    parser.set_defaults(**SIZES[known.size])
    args = parser.parse_args(argv)
    for flag in ("instruction_steps", "symbol_steps", "batch_size", "input_length", "target_length",
                 "eval_queries", "k_per_class", "d_model", "num_layers"):
        if getattr(args, flag) < 1:
            print(f"symbol-tuning demo: --{flag} must be >= 1, got {getattr(args, flag)}", file=sys.stderr)
            return 2
    run_dir = run(args)
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the input pipeline outrun the trainer? Packed decoder-only batch rate vs training-step consumption.

    python benchmarks/data_vs_trainer.py [--mixture embedded_symbol_16] [--vocabs bytes,spm]
        [--inputs 1536 --targets 512 --batch 8] [--batches 20] [--processes 1]
        [--trainer_json ours.jsonl [--trainer_config NAME] | --trainer_tokens_per_s N]

The 1.1B benchmark trains rows of 2048 tokens, 8 per step; the pipeline here builds decoder-only packed
rows of inputs + targets = 2048 tokens (the paper's 512 target tokens) from the embedded symbol-tuning
mixture, 8 rows per batch, and counts row tokens per second (padding included: the trainer pays for
those too). With --processes P, P host shards (`BatchStream(shard_index, num_shards)`) run in parallel
and their tokens are summed over the wall time. The trainer's tokens/s comes from a train_throughput
JSON line (--trainer_json), a number (--trainer_tokens_per_s), or, with neither, from timing the tiny
decoder on this machine. Target on the GPU: pipeline >= 20x the trainer.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET_RATIO = 20.0


def import_tasks() -> None:
    """Register our tasks and mixtures; without an installed package (a bare GPU image with the checkout
    on PYTHONPATH) load the top-level `tasks/` folder as `symbol_tuning.tasks`."""
    try:
        import symbol_tuning.tasks  # noqa: F401
        return
    except ModuleNotFoundError as err:
        if err.name != "symbol_tuning.tasks":
            raise
    spec = importlib.util.spec_from_file_location("symbol_tuning.tasks", ROOT / "tasks" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "tasks")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["symbol_tuning.tasks"] = module
    spec.loader.exec_module(module)


def make_vocab(name: str, folder: pathlib.Path):
    """The byte vocabulary, or a SentencePiece model trained here on a few hundred embedded prompts."""
    from symbol_tuning.data.vocabularies import ByteVocabulary
    if name == "bytes":
        return ByteVocabulary()
    if name != "spm":
        raise ValueError(f"--vocabs: unknown vocabulary {name!r}; expected bytes or spm")
    model = folder / "spm.model"
    if not model.exists():
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from data_pipeline import _train_spm  # the data benchmark's small tokenizer recipe

        from symbol_tuning.data.pipeline import BatchStream
        stream = BatchStream("embedded_symbol_50", vocabulary=ByteVocabulary(), batch_size=1)
        _train_spm([stream.example_at(i)["inputs"] for i in range(300)], folder)
    from symbol_tuning.data.vocabularies import SentencePieceVocabulary
    return SentencePieceVocabulary(model)


def _shard_rate(job: tuple) -> tuple[int, int, float, float]:
    """(row tokens, non-padding tokens, wall seconds, CPU seconds) of `batches` batches of one host shard."""
    mixture, vocab_name, folder, lengths, batch, batches, shard, shards = job
    import_tasks()
    from symbol_tuning.data.pipeline import BatchStream
    vocab = make_vocab(vocab_name, pathlib.Path(folder))
    def stream():
        return BatchStream(mixture, vocabulary=vocab, feature_lengths=lengths, batch_size=batch,
                           model_family="decoder_only", seed=0, shard_index=shard, num_shards=shards)
    warm = stream()
    for position in range(shard, 4096, 7 * shards):  # build every task's data and the symbol pools first
        warm.example_at(position)
    timed = stream()
    start, cpu = time.perf_counter(), time.process_time()
    rows = real = 0
    for _ in range(batches):
        b = next(timed)
        rows += b["decoder_input_tokens"].size
        segments = b.get("decoder_segment_ids")
        real += b["decoder_input_tokens"].size if segments is None else int((segments > 0).sum())
    return rows, real, time.perf_counter() - start, time.process_time() - cpu


def pipeline_rate(*, mixture: str, vocab: str, folder: str, lengths: dict[str, int], batch: int, batches: int,
                  processes: int = 1) -> dict:
    """Packed row tokens per second of `processes` host shards together: by CPU time (each shard's
    tokens over its own CPU seconds, summed: one free core per process, as on a dedicated host) and by
    wall clock (what this possibly shared machine gave)."""
    jobs = [(mixture, vocab, folder, lengths, batch, batches, i, processes) for i in range(processes)]
    if processes == 1:
        results = [_shard_rate(jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            results = pool.map(_shard_rate, jobs)
    tokens = sum(r[0] for r in results)
    real = sum(r[1] for r in results)
    wall = max(r[2] for r in results)
    cpu_rate = sum(r[0] / r[3] for r in results)
    return {"vocab": vocab, "processes": processes, "tokens_per_s": cpu_rate, "wall_tokens_per_s": tokens / wall,
            "fill": real / tokens, "batches_per_s": cpu_rate / (lengths["inputs"] + lengths["targets"]) / batch}


def trainer_rate(args: argparse.Namespace) -> tuple[float, str]:
    """(tokens/s, where it came from)."""
    if args.trainer_tokens_per_s is not None:
        return float(args.trainer_tokens_per_s), "--trainer_tokens_per_s"
    if args.trainer_json:
        path = pathlib.Path(args.trainer_json)
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise SystemExit(f"--trainer_json {path} line {i}: not JSON ({err})") from None
        usable = [r for r in rows if "tokens_per_s" in r and (args.trainer_config is None
                                                             or r.get("config") == args.trainer_config)]
        if not usable:
            raise SystemExit(f"--trainer_json {path}: no line with tokens_per_s"
                             + (f" for config {args.trainer_config!r}" if args.trainer_config else ""))
        return float(usable[0]["tokens_per_s"]), f"{path.name}: {usable[0]['config']} on {usable[0].get('device')}"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_throughput
    row = train_throughput.run_decoder(train_throughput.build_parser().parse_args(["--tiny", "--steps", "5"]))
    return float(row["tokens_per_s"]), f"measured here: {row['config']} on {row['device']}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixture", default="embedded_symbol_16")
    p.add_argument("--vocabs", default="bytes,spm")
    p.add_argument("--inputs", type=int, default=1536)
    p.add_argument("--targets", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--trainer_json", default=None)
    p.add_argument("--trainer_config", default=None, help="config name to pick from --trainer_json")
    p.add_argument("--trainer_tokens_per_s", type=float, default=None)
    args = p.parse_args(argv)
    if args.processes < 1 or args.batches < 1:
        raise SystemExit(f"--processes={args.processes} and --batches={args.batches} must be >= 1")
    import_tasks()
    lengths = {"inputs": args.inputs, "targets": args.targets}
    train_tps, source = trainer_rate(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for vocab in args.vocabs.split(","):
            make_vocab(vocab, pathlib.Path(tmp))  # train once, before any timing or worker starts
            rows.append(pipeline_rate(mixture=args.mixture, vocab=vocab, folder=tmp, lengths=lengths,
                                      batch=args.batch, batches=args.batches, processes=args.processes))
    print(f"pipeline: {args.mixture}, decoder-only packed rows of {args.inputs}+{args.targets} tokens, "
          f"batch {args.batch}, {args.processes} process(es) on {os.cpu_count()} cores")
    print(f"trainer: {train_tps:,.0f} tokens/s ({source})")
    print(f"{'vocab':6s} {'procs':>5s} {'tokens/s (CPU)':>15s} {'tokens/s (wall)':>16s} {'batches/s':>10s} "
          f"{'fill':>5s} {'pipeline / trainer':>19s} {'target':>7s}")
    for r in rows:
        ratio = r["tokens_per_s"] / train_tps
        print(f"{r['vocab']:6s} {r['processes']:5d} {r['tokens_per_s']:15,.0f} {r['wall_tokens_per_s']:16,.0f} "
              f"{r['batches_per_s']:10.2f} {r['fill']:5.2f} {ratio:18.1f}x "
              f"{'ok' if ratio >= TARGET_RATIO else 'MISS':>7s}")
        row = {"bench": "data_vs_trainer", **r, "trainer_tokens_per_s": train_tps, "ratio": ratio}
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`symbol-tuning demo`: the embedded default on this machine, offline, in seconds.

For now it builds the embedded symbol-tuning mixture with the byte vocabulary, prints a few decoded
prompts and targets, and the shapes and fill ratio of one packed batch for each model family.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import numpy as np

from symbol_tuning.pipeline import BatchStream, MixtureSampler
from symbol_tuning.vocabularies import ByteVocabulary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="symbol-tuning demo", description=__doc__.splitlines()[0])
    p.add_argument("--mixture", default="embedded_symbol_16", help="task or mixture name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_prompts", type=int, default=3, help="prompts to print")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--inputs_length", type=int, default=2048)
    p.add_argument("--targets_length", type=int, default=512)
    p.add_argument("--max_chars", type=int, default=600, help="characters of each prompt to show")
    return p


def fill_ratio(batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Fraction of non-padding positions per token feature of a batch."""
    out = {}
    for key in ("encoder_input_tokens", "decoder_target_tokens"):
        if key in batch:
            out[key] = float((batch[key] != 0).mean())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    import symbol_tuning.tasks  # noqa: F401  (registers the embedded tasks)

    vocab = ByteVocabulary()
    sampler = MixtureSampler(args.mixture, seed=args.seed)
    print(f"mixture {args.mixture!r}: {len(sampler.tasks)} tasks, seed {args.seed}")
    stream = BatchStream(args.mixture, vocabulary=vocab, batch_size=args.batch_size, seed=args.seed,
                         feature_lengths={"inputs": args.inputs_length, "targets": args.targets_length})
    for pos in range(args.num_prompts):
        ex = stream.example_at(pos)
        inputs, targets = stream.tokenize(ex)
        text = vocab.decode(inputs)
        shown = text if len(text) <= args.max_chars else "..." + text[-args.max_chars:]
        print(f"\n--- prompt {pos}: task {ex['task']} index {ex['index']} ({inputs.size} input tokens)")
        print(shown)
        print(f"--- target: {vocab.decode(targets)!r}")
    for family in ("encoder_decoder", "decoder_only"):
        stream = BatchStream(args.mixture, vocabulary=vocab, batch_size=args.batch_size, seed=args.seed,
                             model_family=family,
                             feature_lengths={"inputs": args.inputs_length, "targets": args.targets_length})
        batch = next(stream)
        seg = batch.get("encoder_segment_ids", batch["decoder_segment_ids"])
        print(f"\n{family} packed batch: {stream.state()['position']} examples")
        for key, value in batch.items():
            print(f"  {key:<26} {tuple(value.shape)} {value.dtype}")
        fills = ", ".join(f"{k} {v:.1%}" for k, v in fill_ratio(batch).items())
        print(f"  fill: {fills}; segments per row: {seg.max(axis=1).tolist()}")
    print(f"\ndemo done in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data pipeline throughput on one core: prompts/s built, tokenized, packed, and end to end.

    python benchmarks/data_pipeline.py [--num 3000] [--mixtures embedded_symbol_16,embedded_symbol_100]
        [--tokenizers bytes,spm,hf]

Inputs 2048 / targets 512, packed encoder-decoder batches of 32 rows, the embedded mixtures.
SentencePiece and HF BPE tokenizers are trained on a few hundred prompts in a temporary folder.
Data generation and tokenizer training happen before timing; rates use this process's CPU time
(the host is shared). Target: >= 2,000 prompts/s end to end.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import symbol_tuning.tasks  # noqa: E402,F401
from symbol_tuning.data.pipeline import BatchStream  # noqa: E402
from symbol_tuning.data.vocabularies import ByteVocabulary, HFTokenizerVocabulary, SentencePieceVocabulary  # noqa: E402

LENGTHS = {"inputs": 2048, "targets": 512}
BATCH = 32


def _train_spm(texts: list[str], folder: pathlib.Path) -> SentencePieceVocabulary:
    import sentencepiece as spm
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(line for t in texts for line in t.splitlines() if line.strip()), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "spm"), vocab_size=800,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
                                   minloglevel=2, hard_vocab_limit=False)
    return SentencePieceVocabulary(folder / "spm.model")


def _train_hf(texts: list[str], folder: pathlib.Path) -> HFTokenizerVocabulary:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=800, special_tokens=["<pad>", "</s>", "<unk>", "<s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = folder / "tokenizer.json"
    tok.save(str(path))
    return HFTokenizerVocabulary(path, eos_token="</s>", bos_token="<s>")


def bench(mixture: str, vocab, num: int) -> dict[str, float]:
    """Seconds per stage for `num` prompts of `mixture` with `vocab`."""
    def stream():
        return BatchStream(mixture, vocabulary=vocab, feature_lengths=LENGTHS, batch_size=BATCH, seed=0)
    warm = stream()
    for pos in range(0, 4096, 7):  # generate every task's data before timing
        warm.example_at(pos)
    s = stream()
    t = time.process_time()
    examples = [s.example_at(p) for p in range(num)]
    build = time.process_time() - t
    t = time.process_time()
    tokens = [s.tokenize(ex) for ex in examples]
    tokenize = time.process_time() - t
    t = time.process_time()
    i = 0
    while i < len(tokens):
        chunk = tokens[i:i + 4 * BATCH]
        s.convert(chunk[:_fitting(s, chunk)])
        i += _fitting(s, chunk)
    pack = time.process_time() - t
    e2e_stream = stream()
    t = time.process_time()
    while e2e_stream.state()["position"] < num:
        next(e2e_stream)
    e2e = time.process_time() - t
    done = e2e_stream.state()["position"]
    return {"build": num / build, "tokenize": num / tokenize, "pack": num / pack, "end_to_end": done / e2e}


def _fitting(s: BatchStream, chunk) -> int:
    from symbol_tuning.data.feature_converters import count_fitting
    lens = [(a.size, b.size) for a, b in chunk]
    return max(1, count_fitting(lens, (LENGTHS["inputs"], LENGTHS["targets"]), num_rows=BATCH))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=3000)
    p.add_argument("--mixtures", default="embedded_symbol_16,embedded_symbol_100")
    p.add_argument("--tokenizers", default="bytes,spm,hf")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        vocabs = {"bytes": ByteVocabulary()}
        wanted = args.tokenizers.split(",")
        if "spm" in wanted or "hf" in wanted:
            s = BatchStream("embedded_symbol_50", vocabulary=vocabs["bytes"], batch_size=1)
            texts = [s.example_at(i)["inputs"] for i in range(300)]
            if "spm" in wanted:
                vocabs["spm"] = _train_spm(texts, pathlib.Path(tmp))
            if "hf" in wanted:
                vocabs["hf"] = _train_hf(texts, pathlib.Path(tmp))
        print(f"one process, inputs {LENGTHS['inputs']} / targets {LENGTHS['targets']}, packed enc-dec batch {BATCH}")
        print(f"{'mixture':<22} {'vocab':<6} {'build':>18} {'tokenize':>18} {'pack':>18} {'end to end':>18}")
        for mixture in args.mixtures.split(","):
            for name in wanted:
                r = bench(mixture, vocabs[name], args.num)
                print(f"{mixture:<22} {name:<6} " + " ".join(f"{r[k]:>9.0f} prompts/s" for k in
                                                            ("build", "tokenize", "pack", "end_to_end")))


if __name__ == "__main__":
    main()

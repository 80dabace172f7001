"""The real-data path: a symbol-tuning mixture over local raw copies of real datasets, bound through
gin, trains a model initialised from an imported HF checkpoint."""
import json
import math
import pathlib
import subprocess
import sys

import pytest

from symbol_tuning import train
from symbol_tuning.data.decontamination import ContaminationError
from symbol_tuning.data.pipeline import BatchStream
from symbol_tuning.data.vocabularies import ByteVocabulary

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_local_symbol_mixture_streams_real_sst2_and_cola_prompts_with_symbols(shared_data, monkeypatch):
    from symbol_tuning.data import task_registry

    # Evaluation data loaded by other tests in this process (e.g. SUBJ, which shares sentences with SST-2) is
    # not part of this mixture's run; the refusal itself is tested below.
    monkeypatch.setattr(task_registry, "_EVAL_DATA", {})
    name = train.local_symbol_mixture(name="test_local_mix", data_root=str(shared_data), datasets=["sst2", "cola"],
                                      symbol_rate=1.0)
    stream = BatchStream(name, vocabulary=ByteVocabulary(), feature_lengths={"inputs": 1024, "targets": 16},
                         batch_size=8, pack=False)
    examples = [stream.example_at(i) for i in range(40)]
    assert {ex["dataset"] for ex in examples} == {"local/sst2", "local/cola"}
    lines = (shared_data / "sst2" / "stsa.binary.train").read_text(encoding="utf-8").split("\n")
    sst2_sentences = [line[2:].strip() for line in lines if line[:2] in ("0 ", "1 ")]
    shown = [ex for ex in examples if ex["dataset"] == "local/sst2"]
    for ex in shown:  # every SST-2 prompt ends with a real training sentence as its query
        assert any(sentence in ex["inputs"][-len(sentence) - 40:] for sentence in sst2_sentences)
    for ex in examples:
        assert ex["targets"].strip() not in ("positive", "negative")  # labels remapped to symbols
        assert len(ex["inputs"].encode("utf-8")) <= 1023
    batch = next(stream)
    assert batch["encoder_input_tokens"].shape == (8, 1024)


def test_local_symbol_mixture_refuses_an_evaluation_dataset(shared_data):
    with pytest.raises((ContaminationError, ValueError), match="subj"):
        train.local_symbol_mixture(name="bad_mix", data_root=str(shared_data), datasets=["sst2", "subj"],
                                   symbol_rate=0.5)


def test_train_cli_on_local_real_data_from_an_imported_hf_t5_checkpoint(shared_data, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=384, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                   num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                                   tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1)
    hf_dir = tmp_path / "hf_t5"
    transformers.T5ForConditionalGeneration(config).save_pretrained(hf_dir, safe_serialization=True)
    model_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "symbol_tuning.train", "--gin_file=models/tiny_t5.gin",
           "--gin_file=runs/tiny_cpu.gin", f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=2",
           "--gin.INPUT_LENGTH=1024", "--gin.TARGET_LENGTH=16", "--gin.BATCH_SIZE=4",
           f"--gin.INITIAL_CHECKPOINT_PATH='{hf_dir}'",
           "--gin.MIXTURE_OR_TASK_NAME=@data.local_symbol_mixture()",
           f"--gin_bindings=data.local_symbol_mixture.data_root = '{shared_data}'",
           "--gin_bindings=data.local_symbol_mixture.datasets = ['sst2', 'cola']",
           "--gin_bindings=data.local_symbol_mixture.symbol_rate = 0.5"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900,
                         env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (model_dir / "metrics_train.jsonl").read_text().splitlines()]
    lines = [r for r in rows if "train/loss" in r]
    assert lines and lines[-1]["step"] == 2 and all(math.isfinite(r["train/loss"]) and r["train/loss"] > 0
                                                    for r in lines)
    assert (model_dir / "2").is_dir()

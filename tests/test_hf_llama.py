"""HF Llama / Qwen2 / Mistral checkpoints in and out, checked against transformers in PyTorch (float32)."""
import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from symbol_tuning.models.decoder_model import DecoderOnlyModel
from symbol_tuning.models.hf_llama import export_llama, import_llama
from symbol_tuning.models.safetensors_io import CheckpointMismatchError

VOCAB = 128
HF_CLASSES = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
              "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
              "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}


def make_hf(tmp_path, model_type="llama", heads=4, kv_heads=2, tied=False, seed=0, **extra):
    """A tiny random HF model saved as safetensors; returns (dir, torch model)."""
    torch.manual_seed(seed)
    config_cls, model_cls = HF_CLASSES[model_type]
    config = config_cls(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=tied,
                        max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                        pad_token_id=0, initializer_range=0.2, attn_implementation="eager", **extra)
    model = model_cls(config).eval()
    with torch.no_grad():  # random norms and biases so a wrong mapping cannot hide behind ones / zeros
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p) if "norm" in name else 0.5 * torch.randn_like(p))
    path = str(tmp_path / f"hf_{model_type}")
    model.save_pretrained(path, safe_serialization=True)
    return path, model


def hf_logits(model, tokens, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(np.asarray(tokens)), attention_mask=torch.tensor(np.asarray(mask))
                     ).logits.numpy()


TOKENS = np.array([[1, 17, 33, 90, 5, 64, 11, 3, 8, 120], [1, 44, 9, 77, 23, 0, 0, 0, 0, 0]], np.int32)
LENGTHS = np.array([10, 5])
VALID = (np.arange(10)[None] < LENGTHS[:, None])


def hf_option_score(model, prompt, option):
    """transformers' summed log-likelihood of `option` after `prompt` (the rank-classification reference)."""
    seq = np.concatenate([prompt, option])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor(seq[None])).logits[0], -1).numpy()
    return sum(logp[len(prompt) - 1 + j, seq[len(prompt) + j]] for j in range(len(option)))


@pytest.mark.parametrize("model_type,heads,kv_heads,tied", [
    ("llama", 4, 4, False),   # GQA ratio 1
    ("llama", 4, 2, True),    # ratio 2, tied embeddings
    ("mistral", 4, 1, False),  # ratio 4 (multi-query)
    ("qwen2", 4, 2, False),   # q/k/v biases
    ("qwen2", 4, 1, True),
])
def test_imported_model_matches_hf_logits_on_right_padded_batch(tmp_path, model_type, heads, kv_heads, tied):
    path, hf = make_hf(tmp_path, model_type, heads, kv_heads, tied)
    config, params = import_llama(path, dtype="float32")
    assert (config.num_kv_heads, config.tie_word_embeddings, config.qkv_bias) == (kv_heads, tied, model_type == "qwen2")
    ours = np.asarray(DecoderOnlyModel(config).compute_logits(params, {"decoder_input_tokens": TOKENS}))
    ref = hf_logits(hf, TOKENS, VALID.astype(np.int64))
    assert np.max(np.abs(ours[VALID] - ref[VALID])) < 1e-4


def test_llama3_rope_scaling_matches_hf(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    path, hf = make_hf(tmp_path, "llama", rope_parameters={"rope_theta": 500.0, **scaling})
    config, params = import_llama(path, dtype="float32")
    assert dict(config.rope_scaling)["rope_type"] == "llama3" and config.rope_theta == 500.0
    positions = np.broadcast_to(np.arange(10) * 20, TOKENS.shape)  # long-range positions exercise all bands
    batch = {"decoder_input_tokens": TOKENS[:1], "decoder_positions": positions[:1]}
    ours = np.asarray(DecoderOnlyModel(config).compute_logits(params, batch))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(TOKENS[:1]), position_ids=torch.tensor(positions[:1])).logits.numpy()
    assert np.max(np.abs(ours - ref)) < 1e-4


@pytest.mark.parametrize("model_type,tied,scan", [("llama", False, True), ("qwen2", True, False)])
def test_exported_checkpoint_reloads_in_transformers_with_equal_logits(tmp_path, model_type, tied, scan):
    path, hf = make_hf(tmp_path, model_type, 4, 2, tied)
    config, params = import_llama(path, dtype="float32", scan_layers=scan)
    out = str(tmp_path / "exported")
    export_llama(config, params, out)
    reloaded = HF_CLASSES[model_type][1].from_pretrained(out, attn_implementation="eager").eval()
    assert type(reloaded).__name__ == type(hf).__name__
    ref = hf_logits(hf, TOKENS, VALID.astype(np.int64))
    again = hf_logits(reloaded, TOKENS, VALID.astype(np.int64))
    assert np.max(np.abs(again[VALID] - ref[VALID])) < 1e-5


def test_greedy_decode_equals_hf_generate_token_for_token(tmp_path):
    path, hf = make_hf(tmp_path, "llama", 4, 2, False, seed=3)
    config, params = import_llama(path, dtype="float32")
    model = DecoderOnlyModel(config)
    new = 8
    prompts = TOKENS[:, :6].copy()
    lengths = np.array([6, 4])
    prompts[1, 4:] = 0
    ours = np.asarray(model.decode(params, prompts, lengths, max_new_tokens=new, eos_id=config.eos_id))
    for row in range(2):
        with torch.no_grad():
            ref = hf.generate(torch.tensor(prompts[row:row + 1, :lengths[row]]), do_sample=False,
                              max_new_tokens=new, min_new_tokens=new, eos_token_id=None, pad_token_id=0,
                              attention_mask=torch.ones(1, int(lengths[row]), dtype=torch.long))
        np.testing.assert_array_equal(ours[row], ref[0, lengths[row]:].numpy())


def test_decode_writes_zeros_after_eos(tmp_path):
    path, hf = make_hf(tmp_path, "llama", 4, 2, False, seed=3)
    config, params = import_llama(path, dtype="float32")
    model = DecoderOnlyModel(config)
    free = np.asarray(model.decode(params, TOKENS[:1, :6], np.array([6]), max_new_tokens=8, eos_id=-1))[0]
    eos = int(free[2])  # pretend the third generated token is the EOS
    first = int(np.argmax(free == eos))
    out = np.asarray(model.decode(params, TOKENS[:1, :6], np.array([6]), max_new_tokens=8, eos_id=eos))[0]
    np.testing.assert_array_equal(out[:first + 1], free[:first + 1])
    assert np.all(out[first + 1:] == 0)


def test_score_options_matches_hf_log_likelihoods(tmp_path):
    path, hf = make_hf(tmp_path, "qwen2", 4, 2, False, seed=5)
    config, params = import_llama(path, dtype="float32")
    prompts = np.array([[1, 40, 41, 42, 43], [1, 50, 51, 0, 0]], np.int32)
    plens = np.array([5, 3])
    options = np.array([[[7, 8, 9], [10, 0, 0], [11, 12, 0]], [[13, 14, 15], [16, 17, 0], [18, 0, 0]]], np.int32)
    olens = np.array([[3, 1, 2], [3, 2, 1]])
    ours = np.asarray(DecoderOnlyModel(config).score_options(params, prompts, plens, options, olens))
    for b in range(2):
        for k in range(3):
            ref = hf_option_score(hf, prompts[b, :plens[b]], options[b, k, :olens[b, k]])
            assert abs(ours[b, k] - ref) < 1e-4


def _rewrite(path, edit):
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_missing_tensor_is_named(tmp_path):
    path, _ = make_hf(tmp_path)
    _rewrite(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointMismatchError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        import_llama(path)


def test_extra_tensor_is_named(tmp_path):
    path, _ = make_hf(tmp_path)
    _rewrite(path, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(32, np.float32)}))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected tensor 'model\.layers\.0\.self_attn\.q_proj\.bias'"):
        import_llama(path)


def test_misshaped_tensor_names_tensor_and_both_shapes(tmp_path):
    path, _ = make_hf(tmp_path)
    _rewrite(path, lambda t: t.update({"model.norm.weight": np.ones(31, np.float32)}))
    with pytest.raises(CheckpointMismatchError, match=r"'model\.norm\.weight' has shape \(31,\), expected \(32,\)"):
        import_llama(path)


def test_bin_only_checkpoint_is_refused_without_unpickling(tmp_path):
    path, _ = make_hf(tmp_path)
    os.remove(os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "pytorch_model.bin"), "wb") as f:
        f.write(b"not a pickle; must never be opened")
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        import_llama(path)


def test_unsupported_model_type_is_named(tmp_path):
    path, _ = make_hf(tmp_path)
    cfg_file = os.path.join(path, "config.json")
    with open(cfg_file) as f:
        cfg = json.load(f)
    cfg["model_type"] = "gpt2"
    with open(cfg_file, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        import_llama(path)


def test_palm_config_export_is_refused_and_writes_nothing(tmp_path):
    from symbol_tuning.models.decoder import DecoderConfig
    config = DecoderConfig.preset("tiny", parallel_block=True, num_kv_heads=1, tie_word_embeddings=True)
    params = DecoderOnlyModel(config).get_initial_variables(jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 4)})
    out = tmp_path / "palm_hf"
    with pytest.raises(ValueError, match="PaLM-style"):
        export_llama(config, params["params"], str(out))
    assert not out.exists() and os.listdir(tmp_path) == []


def test_fused_unscanned_import_matches_hf_and_exports_back_unchanged(tmp_path):
    """fused_projections and scan_layers=False keep the parameter names, so HF import / export stay exact."""
    path, hf = make_hf(tmp_path, "llama", 4, 2, False)
    config, params = import_llama(path, dtype="float32", fused_projections=True, scan_layers=False)
    ours = np.asarray(DecoderOnlyModel(config).compute_logits(params, {"decoder_input_tokens": TOKENS}))
    ref = hf_logits(hf, TOKENS, VALID.astype(np.int64))
    assert np.max(np.abs(ours[VALID] - ref[VALID])) < 1e-4
    export_llama(config, params, str(tmp_path / "out"))
    original, exported = load_file(os.path.join(path, "model.safetensors")), load_file(
        str(tmp_path / "out" / "model.safetensors"))
    assert sorted(exported) == sorted(k for k in original if "rotary" not in k)
    for name, value in exported.items():
        np.testing.assert_array_equal(value, original[name].astype(np.float32), err_msg=name)


# Sliding-window attention: window 3 over 10-token rows, so most keys fall outside it. Qwen2 with
# max_window_layers=1 slides on layer 1 only (transformers: layers >= max_window_layers slide).
WINDOWED = {
    "mistral": ("mistral", dict(sliding_window=3)),
    "qwen2_mixed": ("qwen2", dict(use_sliding_window=True, sliding_window=3, max_window_layers=1)),
    "qwen2_off": ("qwen2", dict(use_sliding_window=False, sliding_window=3, max_window_layers=1)),
}


@pytest.mark.parametrize("case,scan", [("mistral", True), ("qwen2_mixed", False), ("qwen2_off", True)])
def test_sliding_window_logits_match_hf_beyond_the_window(tmp_path, case, scan):
    model_type, extra = WINDOWED[case]
    path, hf = make_hf(tmp_path, model_type, **extra)
    config, params = import_llama(path, dtype="float32", scan_layers=scan)
    mixed = ("full_attention", "sliding_attention")
    expected = {"mistral": (3, None), "qwen2_mixed": (3, mixed), "qwen2_off": (None, mixed)}[case]
    assert (config.sliding_window, config.layer_types) == expected
    ref = hf_logits(hf, TOKENS, VALID.astype(np.int64))

    def diff(cfg):
        ours = np.asarray(DecoderOnlyModel(cfg).compute_logits(params, {"decoder_input_tokens": TOKENS}))
        return np.max(np.abs(ours[VALID] - ref[VALID]))

    assert diff(config) < 1e-4
    if case != "qwen2_off":  # the window changes the logits here, so the check above can fail
        assert diff(config.replace(sliding_window=None, layer_types=None)) > 0.1
    if case == "qwen2_mixed":  # and so does which layer slides
        assert diff(config.replace(layer_types=None)) > 0.1


@pytest.mark.parametrize("segment_causal", [False, True])
def test_packed_training_row_applies_the_window_per_segment_like_hf(tmp_path, segment_causal):
    """The training path (packed rows, segment ids, reset positions) gets the window as HF does per sequence."""
    path, hf = make_hf(tmp_path, "mistral", sliding_window=3)
    config, params = import_llama(path, dtype="float32", segment_causal=segment_causal)
    first, second = TOKENS[0, :6], TOKENS[0, 3:10]
    batch = {"decoder_input_tokens": np.concatenate([first, second])[None],
             "decoder_segment_ids": np.array([[1] * 6 + [2] * 7]),
             "decoder_positions": np.concatenate([np.arange(6), np.arange(7)])[None]}
    ours = np.asarray(DecoderOnlyModel(config).compute_logits(params, batch))[0]
    for seq, rows in ((first, slice(0, 6)), (second, slice(6, 13))):
        ref = hf_logits(hf, seq[None], np.ones((1, len(seq)), np.int64))[0]
        assert np.max(np.abs(ours[rows] - ref)) < 1e-4


@pytest.mark.parametrize("case", ["mistral", "qwen2_mixed"])
def test_cached_scoring_and_decoding_apply_the_window_like_hf(tmp_path, case):
    model_type, extra = WINDOWED[case]
    path, hf = make_hf(tmp_path, model_type, seed=3, **extra)
    config, params = import_llama(path, dtype="float32")
    model = DecoderOnlyModel(config)
    prompts = np.array([[1, 40, 41, 42, 43, 44], [1, 50, 51, 52, 0, 0]], np.int32)
    plens = np.array([6, 4])
    options = np.array([[[7, 8, 9], [10, 0, 0]], [[13, 14, 15], [16, 17, 0]]], np.int32)
    olens = np.array([[3, 1], [3, 2]])
    scores = np.asarray(model.score_options(params, prompts, plens, options, olens))
    new = 6
    decoded = np.asarray(model.decode(params, prompts, plens, max_new_tokens=new, eos_id=-1))
    for b in range(2):
        for k in range(2):
            ref = hf_option_score(hf, prompts[b, :plens[b]], options[b, k, :olens[b, k]])
            assert abs(scores[b, k] - ref) < 1e-4
        with torch.no_grad():
            ref = hf.generate(torch.tensor(prompts[b:b + 1, :plens[b]]), do_sample=False, max_new_tokens=new,
                              min_new_tokens=new, eos_token_id=None, pad_token_id=0,
                              attention_mask=torch.ones(1, int(plens[b]), dtype=torch.long))
        np.testing.assert_array_equal(decoded[b], ref[0, plens[b]:].numpy())


@pytest.mark.parametrize("case", ["mistral", "qwen2_mixed", "qwen2_off"])
def test_export_writes_the_window_back_and_transformers_logits_match(tmp_path, case):
    model_type, extra = WINDOWED[case]
    path, hf = make_hf(tmp_path, model_type, **extra)
    config, params = import_llama(path, dtype="float32")
    out = str(tmp_path / "exported")
    export_llama(config, params, out)
    with open(os.path.join(out, "config.json")) as f:
        written = json.load(f)
    with open(os.path.join(path, "config.json")) as f:
        original = json.load(f)  # as transformers itself saved it
    keys = ("sliding_window",) + (("use_sliding_window", "max_window_layers", "layer_types") if model_type == "qwen2"
                                  else ())
    assert {k: written[k] for k in keys} == {k: original[k] for k in keys}
    reloaded = HF_CLASSES[model_type][1].from_pretrained(out, attn_implementation="eager").eval()
    ref = hf_logits(hf, TOKENS, VALID.astype(np.int64))
    again = hf_logits(reloaded, TOKENS, VALID.astype(np.int64))
    assert np.max(np.abs(again[VALID] - ref[VALID])) < 1e-5


def test_windows_that_an_hf_class_cannot_hold_are_refused_and_bad_values_named(tmp_path):
    from symbol_tuning.models.decoder import DecoderConfig
    tiny = DecoderConfig.preset("tiny")
    params = DecoderOnlyModel(tiny).get_initial_variables(jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 4)})
    with pytest.raises(ValueError, match="sliding_window=8 has no LlamaForCausalLM"):
        export_llama(tiny.replace(sliding_window=8), params["params"], str(tmp_path / "llama"))
    mixed = tiny.replace(hf_model_type="mistral", sliding_window=8, layer_types=("full_attention", "sliding_attention"))
    with pytest.raises(ValueError, match="MistralForCausalLM slides on every layer"):
        export_llama(mixed, params["params"], str(tmp_path / "mistral"))
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="sliding_window must be a positive int"):
        tiny.replace(sliding_window=0)
    with pytest.raises(ValueError, match="layer_types must list one of"):
        tiny.replace(layer_types=("sliding_attention",))
    assert DecoderConfig.from_dict(json.loads(json.dumps(mixed.to_dict()))) == mixed  # native checkpoints' JSON

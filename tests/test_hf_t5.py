"""HF T5 safetensors import/export: round trips through transformers, sharded checkpoints, and clear errors
for missing, extra, misshaped or untied tensors, pickled weights and non-gated configs."""
from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from symbol_tuning.models.hf_t5 import export_t5, import_t5
from symbol_tuning.models.safetensors_io import CheckpointMismatchError
from symbol_tuning.models.t5 import T5Config
from symbol_tuning.models.t5_model import EncoderDecoderModel

VOCAB = 48
SHAPE = dict(d_model=16, d_kv=4, num_heads=4, d_ff=32, num_layers=2, num_decoder_layers=1,
             relative_attention_num_buckets=8, relative_attention_max_distance=16)


def build_hf_t5(directory, *, seed: int = 0, **save_kwargs):
    """A random float32 T5.1.1-shaped HF model with an untied head and non-trivial norms, saved as safetensors."""
    torch.manual_seed(seed)
    cfg = transformers.T5Config(vocab_size=VOCAB, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                                tie_word_embeddings=False, **SHAPE)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.3 * torch.randn_like(p))
        model.lm_head.weight = torch.nn.Parameter(0.3 * torch.randn(VOCAB, SHAPE["d_model"]))
    model.save_pretrained(str(directory), safe_serialization=True, **save_kwargs)
    return model


def hf_logits(model, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0),
                     decoder_input_ids=torch.tensor(dec)).logits.numpy()


def tokens(seed: int):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, VOCAB, (2, 9))
    enc[1, 4:] = 0
    dec = rng.integers(2, VOCAB, (2, 5))
    dec[:, 0] = 0
    return enc, dec


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_t5")
    return path, build_hf_t5(path)


def test_export_reloads_in_transformers_with_the_same_logits(saved, tmp_path):
    path, hf = saved
    cfg, params = import_t5(str(path), scan_layers=False)
    out = tmp_path / "exported"
    export_t5(cfg, params, str(out))
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(out)).eval()
    enc, dec = tokens(0)
    np.testing.assert_allclose(hf_logits(reloaded, enc, dec), hf_logits(hf, enc, dec), rtol=0, atol=1e-6)


def test_randomly_initialised_model_exports_to_transformers_with_matching_logits(tmp_path):
    cfg = T5Config(vocab_size=VOCAB, d_model=16, num_heads=2, d_kv=8, d_ff=24, num_encoder_layers=1,
                   num_decoder_layers=2, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                   dtype="float32")
    model = EncoderDecoderModel(cfg)
    enc, dec = tokens(1)
    params = jax.jit(lambda r: model.get_initial_variables(r, {"encoder_input_tokens": enc.shape,
                                                               "decoder_input_tokens": dec.shape}))(
        jax.random.PRNGKey(3))
    export_t5(cfg, params, str(tmp_path / "out"))  # boxed params with the "params" collection are accepted
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "out")).eval()
    ours = np.asarray(jax.jit(model.compute_logits)(params["params"], {"encoder_input_tokens": enc,
                                                              "decoder_input_tokens": dec}))
    assert np.abs(ours - hf_logits(reloaded, enc, dec)).max() < 1e-4
    cfg2, params2 = import_t5(str(tmp_path / "out"), dtype="float32")
    assert cfg2.replace(dtype="float32") == cfg
    jax.tree.map(np.testing.assert_array_equal, params2, jax.tree.map(np.asarray, nn.meta.unbox(params["params"])))


def test_sharded_checkpoint_imports_like_the_single_file(saved, tmp_path):
    path, _ = saved
    build_hf_t5(tmp_path, max_shard_size="8KB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    _, single = import_t5(str(path))
    _, sharded = import_t5(str(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, single, sharded)


def _rewrite(src, dst, change):
    os.makedirs(dst, exist_ok=True)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    change(tensors)
    save_file(tensors, os.path.join(dst, "model.safetensors"))
    with open(os.path.join(src, "config.json"), encoding="utf-8") as f:
        config = f.read()
    with open(os.path.join(dst, "config.json"), "w", encoding="utf-8") as f:
        f.write(config)
    return str(dst)


def test_missing_tensor_is_named_with_its_expected_shape(saved, tmp_path):
    name = "decoder.block.0.layer.1.EncDecAttention.k.weight"
    bad = _rewrite(saved[0], tmp_path, lambda t: t.pop(name))
    with pytest.raises(CheckpointMismatchError, match=rf"missing tensor '{name}' \(expected shape \(16, 16\)\)"):
        import_t5(bad)


def test_extra_tensor_is_named(saved, tmp_path):
    bad = _rewrite(saved[0], tmp_path, lambda t: t.update({"encoder.block.7.layer.0.layer_norm.weight":
                                                            np.ones(16, np.float32)}))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected tensor 'encoder.block.7.layer.0.layer_norm.weight'"):
        import_t5(bad)


def test_misshaped_tensor_is_named_with_both_shapes(saved, tmp_path):
    name = "encoder.block.1.layer.1.DenseReluDense.wi_0.weight"
    bad = _rewrite(saved[0], tmp_path, lambda t: t.update({name: np.zeros((31, 16), np.float32)}))
    with pytest.raises(CheckpointMismatchError, match=rf"'{name}' has shape \(31, 16\), expected \(32, 16\)"):
        import_t5(bad)


def test_embedding_copy_that_differs_from_shared_weight_is_refused(saved, tmp_path):
    bad = _rewrite(saved[0], tmp_path, lambda t: t.update(
        {"encoder.embed_tokens.weight": t["shared.weight"] + 1.0}))
    with pytest.raises(CheckpointMismatchError, match="encoder.embed_tokens.weight"):
        import_t5(bad)


def test_equal_embedding_copies_written_by_older_transformers_are_accepted(saved, tmp_path):
    good = _rewrite(saved[0], tmp_path, lambda t: t.update({"encoder.embed_tokens.weight": t["shared.weight"],
                                                            "decoder.embed_tokens.weight": t["shared.weight"]}))
    _, params = import_t5(good)
    _, reference = import_t5(str(saved[0]))
    jax.tree.map(np.testing.assert_array_equal, params, reference)


def test_directory_with_only_pickled_weights_is_refused(saved, tmp_path):
    with open(tmp_path / "config.json", "w", encoding="utf-8") as f:
        f.write((saved[0] / "config.json").read_text(encoding="utf-8"))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ValueError, match="pytorch_model.bin.*refused"):
        import_t5(str(tmp_path))


def test_non_gated_original_t5_feed_forward_is_refused_by_name():
    hf = transformers.T5Config(vocab_size=VOCAB, feed_forward_proj="relu", **SHAPE).to_dict()
    with pytest.raises(ValueError, match="feed_forward_proj 'relu'"):
        T5Config.from_hf_config(hf)


def test_hf_config_round_trip_keeps_every_field():
    cfg = T5Config.preset("flan_t5_base", dtype="float32")
    assert T5Config.from_hf_config(json.loads(json.dumps(cfg.to_hf_config())), dtype="float32") == cfg
    hf = transformers.T5Config(**{k: v for k, v in cfg.to_hf_config().items() if k != "architectures"})
    assert T5Config.from_hf_config(hf.to_dict(), dtype="float32") == cfg


def test_export_into_a_non_empty_directory_is_refused_and_writes_nothing(saved, tmp_path):
    cfg, params = import_t5(str(saved[0]))
    (tmp_path / "keep.txt").write_text("x", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not empty"):
        export_t5(cfg, params, str(tmp_path))
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_fused_projections_and_padding_as_lengths_match_hf_logits_and_export_back(saved, tmp_path):
    """The speed options keep the parameter tree, so import and export stay exact for right-padded inputs."""
    path, hf = saved
    cfg, params = import_t5(str(path), fused_projections=True, padding_as_lengths=True, scan_layers=False)
    enc, dec = tokens(3)
    ours = np.asarray(EncoderDecoderModel(cfg.replace(dtype="float32")).compute_logits(
        params, {"encoder_input_tokens": enc, "decoder_input_tokens": dec}))
    np.testing.assert_allclose(ours, hf_logits(hf, enc, dec), rtol=0, atol=1e-4)
    export_t5(cfg, params, str(tmp_path / "out"))
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "out")).eval()
    np.testing.assert_allclose(hf_logits(reloaded, enc, dec), hf_logits(hf, enc, dec), rtol=0, atol=1e-6)

"""The Flax T5.1.1 encoder-decoder against HF transformers' PyTorch T5 (float32, CPU), plus the wrapper's
packing, scoring, decoding, dropout, remat and parameter metadata."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from symbol_tuning.models.hf_t5 import import_t5
from symbol_tuning.models.layers import make_attention_mask
from symbol_tuning.models.t5 import T5Config, T5Transformer, relative_position_bucket
from symbol_tuning.models.t5_model import EncoderDecoderModel, model_from_config

VOCAB = 64
SHAPES = {
    "buckets8_dist16_heads4_dff64_enc2_dec3": dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                                                   num_decoder_layers=3, relative_attention_num_buckets=8,
                                                   relative_attention_max_distance=16),
    "buckets32_dist128_heads2_dff32_enc3_dec1": dict(d_model=16, d_kv=8, num_heads=2, d_ff=32, num_layers=3,
                                                     num_decoder_layers=1, relative_attention_num_buckets=32,
                                                     relative_attention_max_distance=128),
    "tied_rescaled_original_t5_head": dict(d_model=24, d_kv=6, num_heads=4, d_ff=48, num_layers=1,
                                           num_decoder_layers=2, relative_attention_num_buckets=8,
                                           relative_attention_max_distance=16, tie_word_embeddings=True),
}


def build_hf_t5(directory, seed: int = 0, tie_word_embeddings: bool = False, **shape):
    """A random float32 HF T5.1.1 model with non-trivial norms (untied head unless tied), saved as safetensors."""
    torch.manual_seed(seed)
    cfg = transformers.T5Config(vocab_size=VOCAB, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                                tie_word_embeddings=tie_word_embeddings, decoder_start_token_id=0, pad_token_id=0,
                                eos_token_id=1, **shape)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.3 * torch.randn_like(p))
        if not tie_word_embeddings:
            model.lm_head.weight = torch.nn.Parameter(0.3 * torch.randn(VOCAB, shape["d_model"]))
    model.save_pretrained(str(directory), safe_serialization=True)
    return model


def random_batch(rng: np.random.Generator, b: int = 3, li: int = 19, lt: int = 9):
    enc = rng.integers(2, VOCAB, (b, li))
    lengths = np.array([li, 5, 12][:b])
    enc[np.arange(li)[None, :] >= lengths[:, None]] = 0
    dec = rng.integers(2, VOCAB, (b, lt))
    dec[:, 0] = 0
    return enc, lengths, dec


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One HF model (buckets 8, distance 16, 2 encoder / 3 decoder layers) imported in float32."""
    path = tmp_path_factory.mktemp("hf_t5_small")
    hf = build_hf_t5(path, **SHAPES["buckets8_dist16_heads4_dff64_enc2_dec3"])
    cfg, params = import_t5(str(path))
    cfg = cfg.replace(dtype="float32")
    return path, hf, EncoderDecoderModel(cfg), params


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("buckets,distance", [(8, 16), (32, 128)])
def test_relative_position_bucket_matches_hf_for_offsets_up_to_300(bidirectional, buckets, distance):
    rel = np.arange(-300, 301)[None, :]
    expected = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        torch.tensor(rel), bidirectional=bidirectional, num_buckets=buckets, max_distance=distance).numpy()
    ours = relative_position_bucket(jnp.asarray(rel, jnp.int32), bidirectional=bidirectional, num_buckets=buckets,
                                    max_distance=distance)
    np.testing.assert_array_equal(np.asarray(ours), expected)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_encoder_outputs_and_decoder_logits_match_hf_float32(tmp_path, name):
    hf = build_hf_t5(tmp_path, seed=1, **SHAPES[name])
    cfg, params = import_t5(str(tmp_path))
    assert cfg.tie_word_embeddings == SHAPES[name].get("tie_word_embeddings", False)
    model = EncoderDecoderModel(cfg.replace(dtype="float32"))
    enc, lengths, dec = random_batch(np.random.default_rng(1))
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0),
                 decoder_input_ids=torch.tensor(dec))
    ok = make_attention_mask(jnp.asarray(enc != 0), jnp.asarray(enc != 0))
    encoded = model.module.apply({"params": params}, jnp.asarray(enc), ok, method=T5Transformer.encode)
    valid = enc != 0
    enc_diff = np.abs(np.asarray(encoded) - out.encoder_last_hidden_state.numpy())[valid]
    assert enc_diff.max() < 1e-4
    logits = jax.jit(model.compute_logits)(params, {"encoder_input_tokens": enc, "decoder_input_tokens": dec})
    assert logits.dtype == jnp.float32
    assert np.abs(np.asarray(logits) - out.logits.numpy()).max() < 1e-4


def test_scan_and_unscanned_layers_give_the_same_logits(small):
    path, _, model, params = small
    cfg_u, params_u = import_t5(str(path), scan_layers=False)
    assert "layers_2" in params_u["decoder"] and "layers" not in params_u["decoder"]
    enc, _, dec = random_batch(np.random.default_rng(2))
    batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec}
    scanned = jax.jit(model.compute_logits)(params, batch)
    unscanned = jax.jit(EncoderDecoderModel(cfg_u.replace(dtype="float32")).compute_logits)(params_u, batch)
    np.testing.assert_allclose(np.asarray(scanned), np.asarray(unscanned), rtol=0, atol=2e-5)


def test_packed_row_equals_two_examples_run_separately(small):
    _, _, model, params = small
    rng = np.random.default_rng(3)
    e1, e2 = rng.integers(2, VOCAB, 6), rng.integers(2, VOCAB, 8)
    d1, d2 = np.r_[0, rng.integers(2, VOCAB, 4)], np.r_[0, rng.integers(2, VOCAB, 3)]
    packed = {
        "encoder_input_tokens": np.r_[e1, e2, 0, 0][None], "decoder_input_tokens": np.r_[d1, d2, 0][None],
        "encoder_segment_ids": np.r_[[1] * 6, [2] * 8, 0, 0][None],
        "decoder_segment_ids": np.r_[[1] * 5, [2] * 4, 0][None],
        "encoder_positions": np.r_[np.arange(6), np.arange(8), 0, 0][None],
        "decoder_positions": np.r_[np.arange(5), np.arange(4), 0][None],
    }
    logits_fn = jax.jit(model.compute_logits)
    logits = np.asarray(logits_fn(params, packed))[0]
    alone = {"encoder_input_tokens": np.stack([np.r_[e1, [0] * 10], np.r_[e2, [0] * 8]]),
             "decoder_input_tokens": np.stack([np.r_[d1, [0] * 5], np.r_[d2, [0] * 6]])}
    one, two = np.asarray(logits_fn(params, alone))
    np.testing.assert_allclose(logits[:5], one[:5], atol=1e-5)
    np.testing.assert_allclose(logits[5:9], two[:4], atol=1e-5)


def test_greedy_decode_matches_hf_generate_token_for_token(small):
    _, hf, model, params = small
    enc, lengths, _ = random_batch(np.random.default_rng(4))
    steps = 10
    with torch.no_grad():
        expected = hf.generate(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0), do_sample=False,
                               num_beams=1, max_new_tokens=steps, min_length=0, no_repeat_ngram_size=0,
                               repetition_penalty=1.0, use_cache=False, eos_token_id=1, pad_token_id=0,
                               decoder_start_token_id=0).numpy()[:, 1:]
    decode = jax.jit(lambda p, t, n: model.decode(p, t, n, max_new_tokens=steps, eos_id=1))
    ours = np.asarray(decode(params, enc, lengths))
    expected = np.pad(expected, ((0, 0), (0, steps - expected.shape[1])))  # generate stops early when all end
    np.testing.assert_array_equal(ours, expected)


def test_decode_writes_zeros_after_eos_and_sampling_depends_only_on_rng(small):
    _, _, model, params = small
    enc, lengths, _ = random_batch(np.random.default_rng(5))
    sample = jax.jit(lambda p, r: model.decode(p, enc, lengths, max_new_tokens=12, eos_id=1, temperature=3.0, rng=r))
    a, b = np.asarray(sample(params, jax.random.PRNGKey(0))), np.asarray(sample(params, jax.random.PRNGKey(0)))
    c = np.asarray(sample(params, jax.random.PRNGKey(1)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for row in np.concatenate([a, c]):
        ends = np.flatnonzero(row == 1)
        if ends.size:
            assert not row[ends[0] + 1:].any()
    greedy = jax.jit(lambda p, eos: model.decode(p, enc, lengths, max_new_tokens=12, eos_id=eos))
    free = np.asarray(greedy(params, -1))  # no token ends a row
    stopped = np.asarray(greedy(params, int(free[0, 0])))  # row 0 ends at its first token
    assert stopped[0, 0] == free[0, 0] and not stopped[0, 1:].any()
    for row_free, row_stopped in zip(free, stopped):
        end = int(np.flatnonzero(row_free == free[0, 0])[0]) if (row_free == free[0, 0]).any() else 11
        np.testing.assert_array_equal(row_stopped[:end + 1], row_free[:end + 1])
        assert not row_stopped[end + 1:].any()
    with pytest.raises(ValueError, match="rng"):
        model.decode(params, enc, lengths, max_new_tokens=2, eos_id=1, temperature=1.0)


def test_score_options_equals_per_option_logits_loop_and_hf_log_likelihood(small):
    _, hf, model, params = small
    rng = np.random.default_rng(6)
    enc, lengths, _ = random_batch(rng, b=2)
    k, lo = 3, 4
    options = rng.integers(2, VOCAB, (2, k, lo))
    opt_lengths = np.array([[4, 2, 3], [1, 4, 2]])
    options[np.arange(lo)[None, None, :] >= opt_lengths[:, :, None]] = 0
    scores = np.asarray(jax.jit(model.score_options)(params, enc, lengths, options, opt_lengths))
    assert scores.shape == (2, k)
    logits_fn = jax.jit(model.compute_logits)
    for i in range(2):
        for j in range(k):
            n = opt_lengths[i, j]
            target = options[i, j, :n]
            dec = np.r_[0, target[:-1]][None]
            padded = np.pad(dec, ((0, 0), (0, lo - n)))  # one compiled shape; causal, so the tail changes nothing
            logp = jax.nn.log_softmax(logits_fn(
                params, {"encoder_input_tokens": enc[i:i + 1], "decoder_input_tokens": padded})[0], axis=-1)
            direct = float(np.sum(np.asarray(logp)[np.arange(n), target]))
            assert abs(scores[i, j] - direct) < 1e-5
            with torch.no_grad():
                hf_logits = hf(input_ids=torch.tensor(enc[i:i + 1, :lengths[i]]),
                               decoder_input_ids=torch.tensor(dec)).logits[0]
            hf_ll = float(torch.log_softmax(hf_logits, -1)[torch.arange(n), torch.tensor(target)].sum())
            assert abs(scores[i, j] - hf_ll) < 1e-4


def test_dropout_changes_logits_only_when_a_rng_is_given():
    cfg = T5Config(vocab_size=VOCAB, d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1,
                   num_decoder_layers=1, dropout_rate=0.3, dtype="float32")
    model = model_from_config(cfg)
    enc, _, dec = random_batch(np.random.default_rng(7))
    batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec}
    params = jax.jit(lambda r: model.get_initial_variables(r, {"encoder_input_tokens": enc.shape,
                                                               "decoder_input_tokens": dec.shape}))(
        jax.random.PRNGKey(0))["params"]
    logits_fn = jax.jit(model.compute_logits)
    plain = np.asarray(logits_fn(params, batch))
    np.testing.assert_array_equal(plain, np.asarray(logits_fn(params, batch)))
    dropped = np.asarray(logits_fn(params, batch, dropout_rng=jax.random.PRNGKey(1)))
    assert np.abs(dropped - plain).max() > 1e-3


def test_full_remat_gives_the_same_loss_gradients_as_no_remat():
    enc, _, dec = random_batch(np.random.default_rng(8))
    batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec}
    base = T5Config(vocab_size=VOCAB, d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1,
                    num_decoder_layers=1, dtype="float32")
    params = nn.meta.unbox(EncoderDecoderModel(base).get_initial_variables(
        jax.random.PRNGKey(0), {"encoder_input_tokens": enc.shape, "decoder_input_tokens": dec.shape})["params"])

    def grads(policy):
        model = EncoderDecoderModel(base.replace(remat_policy=policy))
        return jax.jit(jax.grad(lambda p: jnp.sum(jax.nn.log_softmax(model.compute_logits(p, batch))[..., 3])))(params)

    reference = grads("none")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads("full"), reference)


def test_bfloat16_compute_stays_close_to_float32(small):
    _, _, model, params = small
    enc, _, dec = random_batch(np.random.default_rng(9))
    batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec}
    f32 = np.asarray(jax.jit(model.compute_logits)(params, batch))
    bf16_model = EncoderDecoderModel(model.config.replace(dtype="bfloat16"))
    bf16 = np.asarray(jax.jit(bf16_model.compute_logits)(params, batch))
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - f32).max() < 0.1 * np.abs(f32).max()


def test_parameters_carry_logical_axis_names_with_a_layers_scan_axis():
    model = model_from_config(T5Config.preset("tiny", vocab_size=VOCAB))
    assert model.family == "encoder_decoder" and model.config.d_model == 64
    boxed = jax.eval_shape(lambda r: model.get_initial_variables(r, {"encoder_input_tokens": (1, 4),
                                                                     "decoder_input_tokens": (1, 3)}),
                           jax.random.PRNGKey(0))["params"]
    leaves = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
    assert all(isinstance(leaf, nn.Partitioned) for _, leaf in leaves)
    names = {"/".join(p.key for p in path): leaf.names for path, leaf in leaves}
    assert names["encoder/layers/attention/query/kernel"] == ("layers", "embed", "heads", "kv")
    assert names["decoder/layers/cross_attention/out/kernel"] == ("layers", "heads", "kv", "embed")
    assert names["decoder/layers/mlp/wi_0/kernel"] == ("layers", "embed", "mlp")
    assert names["decoder/layers/pre_mlp_norm/scale"] == ("layers", "embed")
    assert names["encoder/relpos/rel_embedding"] == ("relpos_buckets", "heads")
    assert names["token_embed/embedding"] == ("vocab", "embed")
    assert names["lm_head/kernel"] == ("embed", "vocab")


@pytest.mark.parametrize("preset", ["flan_t5_small", "t5_1_1_xl"])
def test_preset_parameter_count_equals_transformers_model_of_the_same_config(preset):
    cfg = T5Config.preset(preset)
    model = EncoderDecoderModel(cfg)
    shapes = jax.eval_shape(lambda r: model.get_initial_variables(r, {"encoder_input_tokens": (1, 4),
                                                                      "decoder_input_tokens": (1, 4)}),
                            jax.random.PRNGKey(0))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    hf_cfg = transformers.T5Config(**{k: v for k, v in cfg.to_hf_config().items() if k != "architectures"})
    with torch.device("meta"):
        hf = transformers.T5ForConditionalGeneration(hf_cfg)
    hf_count = sum(p.numel() for p in hf.parameters()) + hf.shared.weight.numel()  # plus the untied head
    assert ours == hf_count


def test_config_rejects_unknown_remat_policy_and_preset_by_name():
    with pytest.raises(ValueError, match="remat_policy 'sometimes'"):
        T5Config.preset("tiny", remat_policy="sometimes")
    with pytest.raises(ValueError, match="flan_t5_huge"):
        T5Config.preset("flan_t5_huge")

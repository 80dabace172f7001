"""The decoder-only family without HF: scan/remat equivalence, packing, shared-prefix scoring, cached
decoding, PaLM-style blocks against a numpy reference, presets and config handling."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symbol_tuning.models.decoder import DecoderConfig
from symbol_tuning.models.decoder_model import DecoderOnlyModel, model_from_config
from symbol_tuning.models.layers import resolve_attention_impl

TINY = DecoderConfig.preset("tiny", dtype="float32", vocab_size=64, d_model=32, head_dim=8, d_ff=48)
PALM = TINY.replace(parallel_block=True, num_kv_heads=1, tie_word_embeddings=True)


@functools.lru_cache(maxsize=None)
def model_for(config):
    """One wrapper (and so one set of jit compilations) per config across tests."""
    return DecoderOnlyModel(config)


@functools.lru_cache(maxsize=None)
def init(config, seed=0, length=8):
    variables = model_for(config).get_initial_variables(jax.random.PRNGKey(seed),
                                                               {"decoder_input_tokens": (2, length)})
    params = nn.meta.unbox(variables["params"])
    # random norm scales so a misplaced norm cannot hide behind ones
    noise = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda p, x: np.asarray(x) * (1 + 0.3 * noise.standard_normal(x.shape, np.float32))
        if "norm" in jax.tree_util.keystr(p) else np.asarray(x), params)


def unscan(params, num_layers):
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree_util.tree_map(lambda x: x[i], params["layers"])
    return out


TOKENS = np.array([[1, 5, 9, 13, 17, 21, 25, 29], [1, 7, 11, 3, 0, 0, 0, 0]], np.int32)


@pytest.mark.parametrize("config", [TINY, PALM], ids=["llama", "palm"])
def test_scan_off_and_remat_give_identical_logits(config):
    params = init(config)
    ref = model_for(config).compute_logits(params, {"decoder_input_tokens": TOKENS})
    variants = ({"scan_layers": False}, {"remat_policy": "full"}, {"scan_layers": False, "remat_policy": "minimal"})
    for changes in variants:
        cfg = config.replace(**changes)
        p = params if cfg.scan_layers else unscan(params, cfg.num_layers)
        got = model_for(cfg).compute_logits(p, {"decoder_input_tokens": TOKENS})
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=0)  # float32 rounding


@pytest.mark.parametrize("policy", ["full", "minimal", "dots"])
def test_remat_gives_the_same_loss_and_gradients_as_no_remat(policy):
    """Every shared policy keeps the loss and its gradients; "dots" too, which the planner models for decoders."""
    params = init(TINY)
    batch = {"decoder_input_tokens": TOKENS}

    def loss_and_grads(remat):
        model = model_for(TINY.replace(remat_policy=remat))
        return jax.jit(jax.value_and_grad(
            lambda p: jnp.sum(jax.nn.log_softmax(model.compute_logits(p, batch))[..., 3])))(params)

    (loss, grads), (ref_loss, ref_grads) = loss_and_grads(policy), loss_and_grads("none")
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(  # float32 rounding, relative to each leaf's scale
        a, b, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(b)))), grads, ref_grads)


def test_params_carry_logical_axis_names():
    variables = jax.eval_shape(lambda: DecoderOnlyModel(TINY).get_initial_variables(
        jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 4)}))["params"]
    names = {k: v.names for k, v in jax.tree_util.tree_leaves_with_path(
        variables, is_leaf=lambda x: isinstance(x, nn.Partitioned)) for k, v in [(jax.tree_util.keystr(k), v)]}
    assert names["['layers']['attn']['query']['kernel']"] == ("layers", "embed", "heads", "kv")
    assert names["['layers']['attn']['key']['kernel']"] == ("layers", "embed", "kv_heads", "kv")
    assert names["['layers']['attn']['out']['kernel']"] == ("layers", "heads", "kv", "embed")
    assert names["['token_embed']['embedding']"] == ("vocab", "embed")
    assert names["['lm_head']['kernel']"] == ("embed", "vocab")
    assert names["['final_norm']['scale']"] == ("embed",)


def test_packed_row_equals_separate_rows():
    params = init(TINY)
    model = model_for(TINY)
    a, b = [1, 5, 9, 13, 17], [1, 7, 11]
    packed = {"decoder_input_tokens": np.array([a + b], np.int32),
              "decoder_segment_ids": np.array([[1] * 5 + [2] * 3]),
              "decoder_positions": np.array([list(range(5)) + list(range(3))])}
    got = np.asarray(model.compute_logits(params, packed))[0]
    sep_a = np.asarray(model.compute_logits(params, {"decoder_input_tokens": np.array([a])}))[0]
    sep_b = np.asarray(model.compute_logits(params, {"decoder_input_tokens": np.array([b])}))[0]
    np.testing.assert_allclose(got, np.concatenate([sep_a, sep_b]), atol=1e-5, rtol=0)


def test_bidirectional_prefix_lets_prefix_see_later_prefix_tokens():
    params = init(TINY)
    changed = TOKENS.copy()
    changed[0, 3] = 40
    prefix = np.zeros_like(TOKENS)
    prefix[:, :5] = 1
    for bidirectional in (False, True):
        model = model_for(TINY.replace(bidirectional_prefix=bidirectional))
        run = lambda t: np.asarray(model.compute_logits(  # noqa: E731
            params, {"decoder_input_tokens": t, "decoder_causal_attention": prefix}))[0, 1]
        moved = np.max(np.abs(run(TOKENS) - run(changed)))
        assert (moved > 1e-4) == bidirectional


def log_likelihood_via_logits(model, params, prompt, option, length=12):
    """Score one option by a plain forward of prompt + option, right-padded to a fixed length."""
    seq = np.zeros((1, length), np.int32)
    seq[0, :len(prompt) + len(option)] = list(prompt) + list(option)
    logp = np.asarray(jax.nn.log_softmax(model.compute_logits(params, {"decoder_input_tokens": seq})[0], -1))
    return sum(logp[len(prompt) - 1 + j, option[j]] for j in range(len(option)))


@pytest.mark.parametrize("config", [TINY, PALM], ids=["llama", "palm"])
def test_score_options_equals_each_option_scored_alone(config):
    model, params = model_for(config), init(config)
    prompts = np.array([[1, 4, 8, 15, 16, 23], [1, 42, 0, 0, 0, 0]], np.int32)
    plens = np.array([6, 2])
    options = np.array([[[3, 5, 0, 0], [7, 0, 0, 0]], [[9, 10, 11, 12], [13, 14, 0, 0]]], np.int32)
    olens = np.array([[2, 1], [4, 2]])
    got = np.asarray(model.score_options(params, prompts, plens, options, olens))
    for b in range(2):
        for k in range(2):
            ref = log_likelihood_via_logits(model, params, prompts[b, :plens[b]], options[b, k, :olens[b, k]])
            assert abs(got[b, k] - ref) < 1e-5


@pytest.mark.parametrize("config", [TINY, PALM], ids=["llama", "palm"])
def test_cached_greedy_decode_equals_uncached_argmax_loop(config):
    model, params = model_for(config), init(config)
    prompts = np.array([[1, 4, 8, 15], [1, 42, 0, 0]], np.int32)
    plens = np.array([4, 2])
    got = np.asarray(model.decode(params, prompts, plens, max_new_tokens=5, eos_id=-1))
    for b in range(2):  # uncached: rerun the whole right-padded row, read the logits at its last token
        seq = np.zeros((1, 9), np.int32)
        seq[0, :plens[b]] = prompts[b, :plens[b]]
        for i in range(5):
            logits = model.compute_logits(params, {"decoder_input_tokens": seq})
            seq[0, plens[b] + i] = int(np.argmax(logits[0, plens[b] + i - 1]))
        np.testing.assert_array_equal(got[b], seq[0, plens[b]:plens[b] + 5])


def test_sampling_is_reproducible_and_uses_the_rng():
    model, params = model_for(TINY), init(TINY)
    run = lambda seed: np.asarray(model.decode(  # noqa: E731
        params, TOKENS[:, :4], np.array([4, 4]), max_new_tokens=6, eos_id=-1, temperature=5.0,
        rng=jax.random.PRNGKey(seed)))
    assert np.array_equal(run(0), run(0)) and not np.array_equal(run(0), run(1))
    with pytest.raises(ValueError, match="rng"):
        model.decode(params, TOKENS[:, :4], np.array([4, 4]), max_new_tokens=2, eos_id=2, temperature=1.0)


def _rms(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def _rope(x, pos, theta):  # x [T, N, H], HF rotate-half layout
    h = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, h, 2) / h)
    ang = np.concatenate([pos[:, None] * inv] * 2, -1)[:, None, :]
    rot = np.concatenate([-x[..., h // 2:], x[..., :h // 2]], -1)
    return x * np.cos(ang) + rot * np.sin(ang)


def numpy_palm_forward(p, tokens, cfg):
    """An independent one-layer parallel-block, multi-query, tied-embedding forward in float64."""
    lay = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64)[0], p["layers"])  # the one scanned layer
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    emb = p["token_embed"]["embedding"]
    x = emb[tokens]
    t = len(tokens)
    pos = np.arange(t, dtype=np.float64)
    h = _rms(x, lay["input_norm"]["scale"], cfg.norm_epsilon)
    q = _rope(np.einsum("td,dnh->tnh", h, lay["attn"]["query"]["kernel"]), pos, cfg.rope_theta)
    k = _rope(np.einsum("td,dnh->tnh", h, lay["attn"]["key"]["kernel"]), pos, cfg.rope_theta)[:, 0]
    v = np.einsum("td,dnh->tnh", h, lay["attn"]["value"]["kernel"])[:, 0]
    s = np.einsum("tnh,sh->nts", q, k) / np.sqrt(cfg.head_dim)
    s = np.where(np.tril(np.ones((t, t), bool))[None], s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    attn = np.einsum("nhd,tnh->td", lay["attn"]["out"]["kernel"], np.einsum("nts,sh->tnh", w, v))
    gate = h @ lay["mlp"]["wi_0"]["kernel"]
    mlp = (gate / (1 + np.exp(-gate)) * (h @ lay["mlp"]["wi_1"]["kernel"])) @ lay["mlp"]["wo"]["kernel"]
    x = x + attn + mlp
    return _rms(x, p["final_norm"]["scale"], cfg.norm_epsilon) @ emb.T


def test_palm_block_matches_numpy_reference():
    cfg = PALM.replace(num_layers=1)
    params = init(cfg)
    assert "post_attn_norm" not in params["layers"] and "lm_head" not in params
    assert params["layers"]["attn"]["key"]["kernel"].shape == (1, 32, 1, 8)
    got = np.asarray(model_for(cfg).compute_logits(params, {"decoder_input_tokens": TOKENS[:1]}))[0]
    ref = numpy_palm_forward(params, TOKENS[0], cfg)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def param_count(config):
    shapes = jax.eval_shape(lambda: DecoderOnlyModel(config).get_initial_variables(
        jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 8)}))
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes)))


@pytest.mark.parametrize("name,published,tolerance", [
    ("llama3_8b", 8.03e9, 0.01), ("palm_8b", 8.63e9, 0.03), ("palm_62b", 62.50e9, 0.03),
    ("decoder_1b", 1.10e9, 0.01)])
def test_presets_have_published_parameter_counts(name, published, tolerance):
    assert abs(param_count(DecoderConfig.preset(name)) / published - 1) < tolerance


def test_dropout_applies_only_with_an_rng():
    cfg = TINY.replace(dropout_rate=0.5)
    model, params = model_for(cfg), init(TINY)
    batch = {"decoder_input_tokens": TOKENS}
    plain = np.asarray(model.compute_logits(params, batch))
    np.testing.assert_allclose(plain, np.asarray(model_for(TINY).compute_logits(params, batch)), atol=1e-6)
    dropped = np.asarray(model.compute_logits(params, batch, dropout_rng=jax.random.PRNGKey(3)))
    assert np.max(np.abs(plain - dropped)) > 1e-3


def test_bfloat16_compute_stays_close_to_float32():
    params = init(TINY)
    f32 = np.asarray(model_for(TINY).compute_logits(params, {"decoder_input_tokens": TOKENS}))
    bf16 = model_from_config(TINY.replace(dtype="bfloat16")).compute_logits(params, {"decoder_input_tokens": TOKENS})
    assert bf16.dtype == jnp.float32
    assert np.max(np.abs(np.asarray(bf16) - f32)) < 0.05 * max(1.0, np.max(np.abs(f32)))


def test_config_round_trips_and_rejects_bad_values():
    cfg = DecoderConfig.preset("llama3_8b", rope_scaling=(("factor", 8.0), ("high_freq_factor", 4.0),
                                                          ("low_freq_factor", 1.0),
                                                          ("original_max_position_embeddings", 8192),
                                                          ("rope_type", "llama3")))
    assert DecoderConfig.from_dict(cfg.to_dict()) == cfg
    assert DecoderConfig.from_hf_config(cfg.to_hf_config()) == cfg.replace(dtype="bfloat16")
    with pytest.raises(ValueError, match="num_kv_heads 3"):
        TINY.replace(num_kv_heads=3)
    with pytest.raises(ValueError, match="rope_scaling type 'yarn'"):
        TINY.replace(rope_scaling=(("rope_type", "yarn"),))
    with pytest.raises(ValueError, match="unknown fields \\['colour'\\]"):
        DecoderConfig.from_dict({**TINY.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="unknown decoder preset 'gpt5'"):
        DecoderConfig.preset("gpt5")
    with pytest.raises(ValueError, match="attention_impl 'flash'"):
        TINY.replace(attention_impl="flash")


@pytest.mark.parametrize("config", [TINY, PALM], ids=["llama", "palm"])
def test_unmasked_causal_path_equals_explicit_causal_mask(config):
    """Training without packing passes no mask (is_causal), so cuDNN's fused kernel can run on GPU; it
    must compute exactly what the materialised lower-triangular mask computes."""
    params = init(config)
    tokens = jnp.asarray(TOKENS)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    causal = jnp.tril(jnp.ones((tokens.shape[1],) * 2, bool))[None, None]
    module = model_for(config).module
    fast, _ = module.apply({"params": params}, tokens, positions, None)
    explicit, _ = module.apply({"params": params}, tokens, positions, jnp.broadcast_to(causal, (2, 1, 8, 8)))
    np.testing.assert_allclose(np.asarray(fast), np.asarray(explicit), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="KV cache needs an explicit mask"):
        cache = model_for(config)._empty_cache(2, 8)
        module.apply({"params": params}, tokens, positions, None, cache=cache, cache_index=0)


def test_auto_attention_picks_cudnn_only_for_half_precision_training_shapes_on_gpu():
    pick = functools.partial(resolve_attention_impl, None, head_dim=64, has_mask=False)
    assert pick(dtype=jnp.bfloat16, backend="gpu") == "cudnn"
    assert pick(dtype=jnp.float16, backend="gpu") == "cudnn"
    assert pick(dtype=jnp.float32, backend="gpu") == "xla"
    assert pick(dtype=jnp.bfloat16, backend="cpu") == "xla"
    assert pick(dtype=jnp.bfloat16, backend="tpu") == "xla"
    masked = functools.partial(resolve_attention_impl, "auto", dtype=jnp.bfloat16, head_dim=64, has_mask=True,
                               backend="gpu")
    assert masked(query_len=2048, key_len=2048) == "cudnn"  # packed rows, T5 self-attention with its bias
    assert masked(query_len=64, key_len=1024) == "xla"  # T5 cross-attention, a prompt against its cache
    assert masked(query_len=1, key_len=2048) == "xla"  # one decoding step against a cache
    assert masked(query_len=1023, key_len=1023) == "xla"  # odd lengths: no biased cuDNN kernel
    assert resolve_attention_impl(None, dtype=jnp.bfloat16, head_dim=12, has_mask=False, backend="gpu") == "xla"
    assert resolve_attention_impl("cudnn", dtype=jnp.float32, head_dim=12, has_mask=True) == "cudnn"
    with pytest.raises(ValueError, match="attention_impl 'flash'"):
        resolve_attention_impl("flash", dtype=jnp.bfloat16, head_dim=64, has_mask=False)

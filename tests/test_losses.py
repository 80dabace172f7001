"""Losses, schedules and optimizers against plain-numpy implementations written here."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symbol_tuning.training import losses, optimizers


def np_log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(-1, keepdims=True)) + logits.max(-1, keepdims=True)
    return logits - log_z, log_z[..., 0]


def np_weighted_ce(logits, targets, weights, z_loss, smoothing, normalizer):
    vocab = logits.shape[-1]
    log_probs, log_z = np_log_softmax(logits.astype(np.float64))
    soft = np.full(logits.shape, smoothing / (vocab - 1))
    for idx in np.ndindex(targets.shape):
        soft[idx + (targets[idx],)] = 1.0 - smoothing
    entropy = -np.sum(np.where(soft > 0, soft * np.log(np.where(soft > 0, soft, 1)), 0), -1)
    per_token = -(soft * log_probs).sum(-1) - entropy + z_loss * log_z ** 2
    z_tok = z_loss * log_z ** 2
    factor = {None: 1.0, "num_real_target_tokens": weights.sum(), "num_target_positions": weights.size}.get(
        normalizer, normalizer)
    return (per_token * weights).sum() / factor, (z_tok * weights).sum() / factor, weights.sum()


@pytest.fixture
def logits_batch():
    rng = np.random.RandomState(0)
    logits = (rng.randn(3, 5, 11) * 3).astype(np.float32)
    targets = rng.randint(0, 11, (3, 5))
    weights = (rng.rand(3, 5) > 0.3).astype(np.float32)
    return logits, targets, weights


def test_cross_entropy_with_logits_matches_numpy_including_z_loss(logits_batch):
    logits, targets, _ = logits_batch
    onehot = np.eye(11, dtype=np.float32)[targets]
    loss, z_term = losses.cross_entropy_with_logits(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32),
                                                    jnp.asarray(onehot), 1e-3)
    log_probs, log_z = np_log_softmax(np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), np.float64))
    want = -(onehot * log_probs).sum(-1) + 1e-3 * log_z ** 2
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(z_term, 1e-3 * log_z ** 2, rtol=1e-5)


@pytest.mark.parametrize("normalizer", [None, 37.0, "num_real_target_tokens", "num_target_positions"])
@pytest.mark.parametrize("smoothing,z_loss", [(0.0, 0.0), (0.1, 1e-4)])
def test_weighted_cross_entropy_matches_numpy_for_each_normalizer(logits_batch, normalizer, smoothing, z_loss):
    logits, targets, weights = logits_batch
    loss, z, weight_sum = losses.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                                        jnp.asarray(weights), z_loss=z_loss,
                                                        label_smoothing=smoothing,
                                                        loss_normalizing_factor=normalizer)
    want_loss, want_z, want_sum = np_weighted_ce(logits, targets, weights, z_loss, smoothing, normalizer)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(z, want_z, rtol=1e-5, atol=1e-9)
    assert float(weight_sum) == want_sum


def test_perfect_prediction_with_label_smoothing_has_near_zero_loss():
    vocab, smoothing = 7, 0.2
    probs = np.full(vocab, smoothing / (vocab - 1))
    probs[3] = 1 - smoothing
    logits = np.log(probs)[None, None].astype(np.float32)
    loss, _, _ = losses.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray([[3]]), jnp.ones((1, 1)),
                                               label_smoothing=smoothing)
    assert abs(float(loss)) < 1e-5


def test_token_accuracy_matches_numpy(logits_batch):
    logits, targets, weights = logits_batch
    targets = targets.copy()
    targets[0] = logits[0].argmax(-1)  # make some predictions right
    want = ((logits.argmax(-1) == targets) * weights).sum() / weights.sum()
    np.testing.assert_allclose(losses.token_accuracy(jnp.asarray(logits), jnp.asarray(targets),
                                                     jnp.asarray(weights)), want, rtol=1e-6)


def test_bad_normalizer_and_shape_mismatch_raise_clear_errors(logits_batch):
    logits, targets, weights = logits_batch
    with pytest.raises(ValueError, match="loss_normalizing_factor='tokens'"):
        losses.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights),
                                      loss_normalizing_factor="tokens")
    with pytest.raises(ValueError, match="weights shape"):
        losses.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="logits shape"):
        losses.weighted_cross_entropy(jnp.asarray(logits[:, :4]), jnp.asarray(targets), jnp.asarray(weights))


STEPS = [0, 1, 5, 99, 100, 101, 250, 999, 1000, 5000]


def test_constant_schedule_warms_up_linearly_then_stays():
    schedule = optimizers.make_schedule(kind="constant", base_learning_rate=3e-3, warmup_steps=100)
    for step in STEPS:
        np.testing.assert_allclose(schedule(step), 3e-3 * min(1.0, step / 100), rtol=1e-6)
    flat = optimizers.make_schedule(kind="constant", base_learning_rate=1e-3)
    assert all(float(flat(s)) == pytest.approx(1e-3) for s in STEPS)


def test_rsqrt_schedule_matches_t5_formula():
    schedule = optimizers.make_schedule(kind="rsqrt", base_learning_rate=1.0, warmup_steps=100)
    for step in STEPS:
        np.testing.assert_allclose(schedule(step), 1.0 / math.sqrt(max(step, 100)), rtol=1e-6)


def test_cosine_schedule_matches_numpy_formula():
    base, low, warm, total = 1e-3, 1e-5, 100, 1000
    schedule = optimizers.make_schedule(kind="cosine", base_learning_rate=base, warmup_steps=warm,
                                        decay_steps=total, min_learning_rate=low)
    for step in STEPS:
        if step < warm:
            want = base * step / warm
        else:
            progress = min(1.0, (step - warm) / (total - warm))
            want = low + 0.5 * (base - low) * (1 + math.cos(math.pi * progress))
        np.testing.assert_allclose(schedule(step), want, rtol=1e-5)


def test_unknown_schedule_or_optimizer_lists_valid_names():
    with pytest.raises(ValueError, match="constant.*rsqrt.*cosine"):
        optimizers.make_schedule(kind="linear", base_learning_rate=1.0)
    with pytest.raises(ValueError, match="adafactor.*adamw"):
        optimizers.make_optimizer(name="sgd", learning_rate=1.0)
    with pytest.raises(ValueError, match="decay_steps"):
        optimizers.make_schedule(kind="cosine", base_learning_rate=1.0, warmup_steps=10)


def np_adamw(params, grads_seq, lr, b1, b2, eps, wd):
    m, v, p = np.zeros_like(params), np.zeros_like(params), params.copy()
    for t, g in enumerate(grads_seq, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * p)
    return p


def run_optax(opt, params, grads_seq):
    state = opt.init(params)
    for g in grads_seq:
        updates, state = opt.update(g, state, params)
        params = jax.tree_util.tree_map(lambda a, b: a + b, params, updates)
    return params


def test_adamw_with_clipping_matches_numpy():
    rng = np.random.RandomState(1)
    params = rng.randn(4, 3)
    grads = [rng.randn(4, 3) * 10 for _ in range(3)]
    opt = optimizers.make_optimizer(name="adamw", learning_rate=0.1, weight_decay=0.01, max_grad_norm=1.0,
                                    b1=0.8, b2=0.9, eps=0.5)
    got = run_optax(opt, jnp.asarray(params, jnp.float32), [jnp.asarray(g, jnp.float32) for g in grads])
    clipped = [g / max(1.0, np.linalg.norm(g)) for g in grads]
    np.testing.assert_allclose(got, np_adamw(params, clipped, 0.1, 0.8, 0.9, 0.5, 0.01), rtol=1e-5)


def np_adafactor(param, grads_seq, lr):
    """Factored Adafactor (Shazeer & Stern 2018) with T5X settings: decay 1 - t^-0.8, update clipping at
    RMS 1, updates scaled by max(RMS(param), 1e-3), no momentum."""
    row, col, p = np.zeros(param.shape[0]), np.zeros(param.shape[1]), param.copy()
    for t, g in enumerate(grads_seq, start=1):
        beta = 1 - t ** -0.8
        g2 = g * g + 1e-30
        row = beta * row + (1 - beta) * g2.mean(1)
        col = beta * col + (1 - beta) * g2.mean(0)
        v_hat = np.outer(row, col) / row.mean()
        u = g / np.sqrt(v_hat)
        u = u / max(1.0, np.sqrt(np.mean(u * u)))
        p = p - lr * max(np.sqrt(np.mean(p * p)), 1e-3) * u
    return p


def test_adafactor_uses_t5x_defaults_factored_second_moments():
    rng = np.random.RandomState(2)
    params = rng.randn(6, 8)
    grads = [rng.randn(6, 8) for _ in range(3)]
    opt = optimizers.make_optimizer(name="adafactor", learning_rate=0.01, min_dim_size_to_factor=4)
    got = run_optax(opt, jnp.asarray(params, jnp.float32), [jnp.asarray(g, jnp.float32) for g in grads])
    np.testing.assert_allclose(got, np_adafactor(params, grads, 0.01), rtol=1e-5)


def test_factoring_view_merges_small_inner_dims_and_keeps_the_layers_dim():
    view = optimizers.factoring_view
    assert view((24, 4096, 64, 64)) == (24, 4096, 4096)  # scanned T5-XXL query kernel
    assert view((24, 64, 64, 4096)) == (24, 4096, 4096)  # its output kernel: the layers dim is never merged
    assert view((64, 64, 4096)) == (4096, 4096)  # unscanned
    assert view((22, 2048, 4, 64)) == (22, 2048, 256)  # GQA key kernel, head_dim 64
    assert view((24, 4096, 10240)) is None  # factorable as it is
    assert view((32, 4096, 32, 128)) is None  # head_dim 128 reaches the threshold
    assert view((4096, 64)) is None and view((32, 64)) is None  # rank 2: optax decides
    assert view((8, 4, 4, 4)) is None  # nothing reaches the threshold even merged


def test_adafactor_factors_a_kernel_with_small_trailing_dims_in_its_merged_view():
    rng = np.random.RandomState(3)
    params = rng.randn(6, 2, 4)  # with threshold 5, optax alone would keep a full second moment
    grads = [rng.randn(6, 2, 4) for _ in range(3)]
    opt = optimizers.make_optimizer(name="adafactor", learning_rate=0.01, min_dim_size_to_factor=5)
    state = opt.init(jnp.asarray(params, jnp.float32))
    sizes = sorted(x.size for x in jax.tree_util.tree_leaves(state))
    assert max(sizes) == 8  # v_row (6,) and v_col (8,) instead of a (6, 2, 4) second moment
    got = run_optax(opt, jnp.asarray(params, jnp.float32), [jnp.asarray(g, jnp.float32) for g in grads])
    assert got.shape == (6, 2, 4)
    want = np_adafactor(params.reshape(6, 8), [g.reshape(6, 8) for g in grads], 0.01).reshape(6, 2, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5)

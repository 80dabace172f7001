"""Shared layers: the rematerialised norm and gated activation give the plain functions' values and
gradients, and a bf16 model's backward pass keeps no float32 copies of its activations."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from symbol_tuning.models.decoder import DecoderConfig
from symbol_tuning.models.decoder_model import DecoderOnlyModel
from symbol_tuning.models.layers import ACTIVATIONS, gated_activation, rms_norm


def _plain_rms_norm(x, scale, eps):
    x = x.astype(jnp.float32)
    return x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def test_rms_norm_values_and_gradients_equal_the_plain_formula():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 5, 16)), jnp.float32)
    scale = jnp.asarray(1 + 0.3 * rng.standard_normal(16), jnp.float32)
    probe = jnp.asarray(rng.standard_normal((3, 5, 16)), jnp.float32)
    ours = lambda x, s: jnp.sum(rms_norm(x, s, 1e-6, jnp.dtype(jnp.float32)) * probe)  # noqa: E731
    plain = lambda x, s: jnp.sum(_plain_rms_norm(x, s, 1e-6) * probe)  # noqa: E731
    np.testing.assert_allclose(ours(x, scale), plain(x, scale), rtol=1e-6)
    for got, want in zip(jax.grad(ours, argnums=(0, 1))(x, scale), jax.grad(plain, argnums=(0, 1))(x, scale)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["silu", "gelu_new"])
def test_gated_activation_values_and_gradients_equal_the_plain_product(activation):
    rng = np.random.default_rng(1)
    gate, up = (jnp.asarray(rng.standard_normal((4, 24)), jnp.float32) for _ in range(2))
    ours = lambda g, u: jnp.sum(jnp.sin(gated_activation(g, u, activation)))  # noqa: E731
    plain = lambda g, u: jnp.sum(jnp.sin(ACTIVATIONS[activation](g) * u))  # noqa: E731
    np.testing.assert_allclose(ours(gate, up), plain(gate, up), rtol=1e-6)
    for got, want in zip(jax.grad(ours, argnums=(0, 1))(gate, up), jax.grad(plain, argnums=(0, 1))(gate, up)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bf16_decoder_backward_keeps_no_float32_copies_of_activations(capsys):
    d, ff = 64, 96
    cfg = DecoderConfig(vocab_size=128, d_model=d, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=16, d_ff=ff,
                        dtype="bfloat16", scan_layers=False)
    model = DecoderOnlyModel(cfg)
    params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(0),
                                                       {"decoder_input_tokens": (2, 32)})["params"])
    ids = np.full((2, 32), 3, np.int32)
    print_saved_residuals(lambda p: model.compute_logits(p, {"decoder_input_tokens": ids}).mean(), params)
    saved = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert f"bf16[2,32,{d}]" in saved and f"bf16[2,32,{ff}]" in saved
    assert not [s for s in saved if s in (f"f32[2,32,{d}]", f"f32[2,32,{ff}]")]  # norms / SiLU in float32
    assert saved.count(f"bf16[2,32,{ff}]") <= 3  # gate, up and their product for wo's gradient

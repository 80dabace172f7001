"""Shared layers: the rematerialised norm and gated activation give the plain functions' values and
gradients, a bf16 model's backward pass keeps no float32 copies of its activations, and the layer stack
is the same scanned or unrolled under every remat policy, which both model configs accept."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from symbol_tuning.models.decoder import DecoderConfig
from symbol_tuning.models.decoder_model import DecoderOnlyModel
from symbol_tuning.models.layers import ACTIVATIONS, REMAT_POLICIES, gated_activation, layer_stack, rms_norm
from symbol_tuning.models.t5 import T5Config


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


@dataclasses.dataclass(frozen=True)
class _StackConfig:
    scan_layers: bool
    remat_policy: str


class _Affine(nn.Module):
    """One toy layer: x * w + shift + offset, returning the new carry and its sum."""

    config: _StackConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, shift, offset):
        w = self.param("w", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed",)), x.shape[-1:])
        x = x * w + shift + offset
        return x, jnp.sum(x)


class _Stack(nn.Module):
    config: _StackConfig

    @nn.compact
    def __call__(self, x, shifts, offset):
        return layer_stack(self.config, _Affine, 3, True, (0, nn.broadcast), (x, shifts, offset))


@pytest.mark.parametrize("policy", sorted(REMAT_POLICIES))
def test_layer_stack_scanned_equals_unrolled_with_per_layer_slices(policy):
    x, shifts, offset = jnp.arange(4.0), jnp.array([0.5, -1.0, 2.0]), jnp.float32(0.25)
    scanned, unrolled = _Stack(_StackConfig(True, policy)), _Stack(_StackConfig(False, policy))
    boxed = scanned.init(jax.random.PRNGKey(0), x, shifts, offset)["params"]
    assert boxed["layers"]["w"].names == ("layers", "embed")
    w = np.asarray(nn.meta.unbox(boxed)["layers"]["w"])
    assert w.shape == (3, 4)
    loop_shapes = jax.eval_shape(lambda: unrolled.init(jax.random.PRNGKey(0), x, shifts, offset))["params"]
    assert sorted(loop_shapes) == ["layers_0", "layers_1", "layers_2"]
    y_scan, sums_scan = scanned.apply({"params": nn.meta.unbox(boxed)}, x, shifts, offset)
    y_loop, sums_loop = unrolled.apply({"params": {f"layers_{i}": {"w": w[i]} for i in range(3)}}, x, shifts, offset)
    want = np.asarray(x)
    for i in range(3):
        want = want * w[i] + float(shifts[i]) + 0.25
    np.testing.assert_allclose(y_scan, want, rtol=1e-6)
    np.testing.assert_allclose(y_loop, want, rtol=1e-6)
    np.testing.assert_allclose(sums_scan, sums_loop, rtol=1e-6)
    assert sums_scan.shape == (3,)


def test_both_model_configs_accept_exactly_the_shared_remat_policies():
    for name in REMAT_POLICIES:
        assert DecoderConfig.preset("tiny", remat_policy=name).remat_policy == name
        assert T5Config.preset("tiny", remat_policy=name).remat_policy == name
    for make in (DecoderConfig.preset, T5Config.preset):
        with pytest.raises(ValueError, match="remat_policy 'sometimes'"):
            make("tiny", remat_policy="sometimes")

"""training/flops.py: peaks by exact device kind, and FLOP counts against counts made by hand from the
shapes (every matmul of the forward pass, 2 FLOPs per multiply-add, x3 for training)."""
import flax.linen as nn
import jax
import pytest

from symbol_tuning.models.decoder import DecoderConfig
from symbol_tuning.models.decoder_model import DecoderOnlyModel
from symbol_tuning.models.t5 import T5Config
from symbol_tuning.models.t5_model import EncoderDecoderModel
from symbol_tuning.training import flops


@pytest.mark.parametrize("kind,name,peak", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4e12),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.0e12),
    ("NVIDIA H100 NVL", "H100 NVL", 835.5e12),
    ("NVIDIA H200", "H200 SXM", 989.4e12),
    ("NVIDIA H200 NVL", "H200 NVL", 835.5e12),
    ("NVIDIA A100-SXM4-80GB", "A100", 312e12),
    ("NVIDIA A100 80GB PCIe", "A100", 312e12),
    ("TPU v4", "TPU v4", 275e12),
    ("TPU v5 lite", "TPU v5e", 197e12),
    ("TPU v5", "TPU v5p", 459e12),
    ("TPU v5p", "TPU v5p", 459e12),
    ("TPU v6 lite", "TPU v6e", 918e12),
    ("cpu", None, None),
])
def test_peak_is_read_from_the_exact_device_kind(kind, name, peak):
    assert flops.chip_name(kind) == name
    assert flops.peak_flops_per_device(kind) == peak


def _params(model, shapes):
    return nn.meta.unbox(jax.eval_shape(lambda k: model.get_initial_variables(k, shapes), jax.random.PRNGKey(0))
                         ["params"])


def test_t5_count_equals_a_count_by_hand_with_cross_attention_kv_over_the_inputs():
    cfg = T5Config(vocab_size=300, d_model=32, num_heads=4, d_kv=8, d_ff=48, num_encoder_layers=3,
                   num_decoder_layers=2, relative_attention_num_buckets=8)
    b, li, lt = 3, 40, 8
    params = _params(EncoderDecoderModel(cfg), {"encoder_input_tokens": (1, 4), "decoder_input_tokens": (1, 4)})
    d, hd, f, v = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.vocab_size
    mm = lambda tokens, n_in, n_out: 2 * tokens * n_in * n_out  # noqa: E731
    enc_layer = 4 * mm(li, d, hd) + 3 * mm(li, d, f) + 2 * mm(li * li, hd, 1)
    dec_layer = (4 * mm(lt, d, hd) + 2 * mm(lt, d, hd) + 2 * mm(li, d, hd)  # self QKVO, cross Q O, cross K V
                 + 3 * mm(lt, d, f) + 2 * mm(lt * lt, hd, 1) + 2 * mm(lt * li, hd, 1))
    forward = b * (cfg.num_encoder_layers * enc_layer + cfg.num_decoder_layers * dec_layer + mm(lt, d, v))
    # the formula also charges 6 x tokens for the norm scales and relative-position tables (no matmul)
    small_enc = (2 * cfg.num_encoder_layers + 1) * d + 8 * cfg.num_heads
    small_dec = (3 * cfg.num_decoder_layers + 1) * d + 8 * cfg.num_heads
    by_hand = 3 * forward + 6 * b * (small_enc * li + small_dec * lt)
    shapes = {"encoder_input_tokens": (b, li), "decoder_input_tokens": (b, lt)}
    assert flops.train_flops_per_step(cfg, params, shapes) == pytest.approx(by_hand, rel=1e-12)
    halved = flops.train_flops_per_step(cfg, params, shapes, causal_halved=True)
    assert by_hand - halved == pytest.approx(3 * b * cfg.num_decoder_layers * mm(lt * lt, hd, 1), rel=1e-12)
    tokens = b * (li + lt)
    assert flops.estimate_flops_per_token(cfg, params, shapes) == pytest.approx(by_hand / tokens, rel=1e-12)


def test_decoder_count_equals_a_count_by_hand_and_halves_only_attention():
    cfg = DecoderConfig(vocab_size=200, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, d_ff=40)
    b, t = 2, 24
    params = _params(DecoderOnlyModel(cfg), {"decoder_input_tokens": (1, 4)})
    mm = lambda tokens, n_in, n_out: 2 * tokens * n_in * n_out  # noqa: E731
    d, kv = cfg.d_model, cfg.num_kv_heads * cfg.head_dim
    layer = (2 * mm(t, d, d) + 2 * mm(t, d, kv) + 3 * mm(t, d, cfg.d_ff) + 2 * mm(t * t, d, 1))
    forward = b * (cfg.num_layers * layer + mm(t, d, cfg.vocab_size))
    norms = (2 * cfg.num_layers + 1) * d
    by_hand = 3 * forward + 6 * b * t * norms
    shapes = {"decoder_input_tokens": (b, t)}
    assert flops.train_flops_per_step(cfg, params, shapes) == pytest.approx(by_hand, rel=1e-12)
    attention = 3 * b * cfg.num_layers * 2 * mm(t * t, d, 1)
    assert flops.train_flops_per_step(cfg, params, shapes, causal_halved=True) == pytest.approx(
        by_hand - attention / 2, rel=1e-12)


def test_mfu_divides_by_the_summed_peak_and_is_none_without_one():
    assert flops.mfu(989.4e12, 1.0, num_devices=2, device_kind="NVIDIA H100 80GB HBM3") == pytest.approx(0.5)
    assert flops.mfu(1e12, 1.0, device_kind="cpu") is None

"""Test set-up: 8 simulated CPU devices for mesh tests (set before JAX starts), real data beside the repo."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(os.environ.get("SYMBOL_TUNING_SHARED_DATA",
                                          pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real raw datasets in ../shared/data (see its MANIFEST.md); CI has the same folder."""
    if not (SHARED_DATA / "MANIFEST.md").exists():
        raise FileNotFoundError(f"real test data not found at {SHARED_DATA} (set SYMBOL_TUNING_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_t5_config():
    """A tiny float32 T5 over the byte vocabulary (259 ids), small enough to evaluate in seconds."""
    from symbol_tuning.models.t5 import T5Config
    return T5Config.preset("tiny", vocab_size=259, d_model=32, d_ff=64, num_heads=2, num_encoder_layers=1,
                           num_decoder_layers=1, dtype="float32")


@pytest.fixture(scope="session")
def tiny_t5_checkpoint(tmp_path_factory, tiny_t5_config) -> str:
    """`tiny_t5_config` with random weights, saved in our native checkpoint format."""
    import flax.linen as nn
    import jax

    from symbol_tuning.models.native_io import save_native
    from symbol_tuning.models.t5_model import model_from_config
    model = model_from_config(tiny_t5_config)
    shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)}
    params = jax.jit(lambda rng: nn.meta.unbox(model.get_initial_variables(rng, shapes)["params"]))(
        jax.random.PRNGKey(0))
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny_t5")
    save_native(tiny_t5_config, params, path)
    return path

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

"""Test set-up: 8 forced CPU devices (before jax is imported) and float32 parity settings."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest  # noqa: E402  (after the environment is set for jax)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A data_dir holding synthetic_speech/{kws,sv,unlabeled}_tiny, prepared once per session."""
    from kdjax.data import prepare

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    for config in ("kws_tiny", "sv_tiny", "unlabeled_tiny"):
        assert prepare.run(f"synthetic_speech/{config}", data_dir=data_dir, num_workers=1) == 0
    return data_dir

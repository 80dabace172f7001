"""Every gin file under gin_configs/ parses and binds (required macros supplied) in a combination it is
meant for, and every model file builds a model whose parameter count matches the published size and,
where HF transformers has the architecture, HF's own count of the same shape (built on the meta device)."""
from __future__ import annotations

import math
import pathlib

import gin
import jax
import pytest
import torch
import transformers

from symbol_tuning import gin_utils, train  # noqa: F401 -- train registers the configurables
from symbol_tuning.plan import _resolve
from symbol_tuning.training import partitioning

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin_configs"
REQUIRED = ["MODEL_DIR = '/tmp/unused'", "VOCABULARY = 'bytes'"]

# Published sizes: Flan-T5 / T5.1.1 (HF model cards), PaLM (Chowdhery et al. 2022, Table 1 shapes),
# Llama 3 (Meta model cards), decoder_1b (a TinyLlama-1.1B shape).
PUBLISHED = {
    "t5_1_1_small": 77e6, "t5_1_1_base": 248e6, "t5_1_1_large": 783e6, "t5_1_1_xl": 2.85e9, "t5_1_1_xxl": 11.3e9,
    "flan_t5_small": 77e6, "flan_t5_base": 248e6, "flan_t5_large": 783e6, "flan_t5_xl": 2.85e9,
    "flan_t5_xxl": 11.3e9, "palm_8b": 8.6e9, "palm_62b": 62.5e9, "palm_540b": 540e9, "llama3_8b": 8.03e9,
    "llama3_70b": 70.6e9, "decoder_1b": 1.1e9,
}
TINY_MODELS = ("tiny_t5", "tiny_decoder")
TOPOLOGY_CHECK_MODEL = "models/flan_t5_small.gin"


def _files(folder: str) -> list[str]:
    return sorted(p.relative_to(GIN_DIR).as_posix() for p in (GIN_DIR / folder).glob("*.gin"))


def _bind(files: list[str], bindings: list[str] = ()) -> None:
    """Parse and finalise (fails on any macro left %gin.REQUIRED)."""
    gin_utils.parse_gin(gin_files=files, gin_bindings=list(bindings), finalize=True)


def _query(name: str):
    return _resolve(gin.query_parameter(name))


def _param_count(model) -> int:
    shapes = ({"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)} if model.family == "encoder_decoder"
              else {"decoder_input_tokens": (1, 8)})
    boxed = jax.eval_shape(lambda k: model.get_initial_variables(k, shapes), jax.random.PRNGKey(0))
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(boxed["params"]))


def _hf_count(model) -> int | None:
    """HF transformers' parameter count for the same shape (meta device: nothing allocated), or None."""
    cfg = model.config
    if model.family == "encoder_decoder":
        with torch.device("meta"):
            hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**cfg.to_hf_config()))
        # transformers 5 ties T5's head to the embedding; Flan-T5 / T5.1.1 checkpoints keep a separate one.
        untied_head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.d_model
        return sum(p.numel() for p in hf.parameters()) + untied_head
    if cfg.parallel_block:
        return None
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg.to_hf_config()))
    return sum(p.numel() for p in hf.parameters())


def test_every_gin_file_starts_with_the_command_that_runs_it():
    files = sorted(GIN_DIR.rglob("*.gin"))
    assert len(files) > 40
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        if path.stem in TINY_MODELS:  # another module's files: their header names the flags on line 2
            assert lines[0].startswith("# ") and "--gin_file=" in lines[1], path
            continue
        assert lines[0].startswith("# ") and "python -m symbol_tuning." in lines[0], f"{path}: first line {lines[0]!r}"


def test_every_gin_file_is_covered_by_a_binding_test():
    covered = set(_files("models")) | set(_files("topologies")) | set(_files("mixtures")) | set(_files("runs"))
    every = {p.relative_to(GIN_DIR).as_posix() for p in GIN_DIR.rglob("*.gin")}
    assert every == covered, f"gin files in folders no test binds: {sorted(every - covered)}"
    assert {"models", "topologies", "mixtures", "runs"} == {p.name for p in GIN_DIR.iterdir() if p.is_dir()}


@pytest.mark.parametrize("model_file", [f for f in _files("models") if pathlib.Path(f).stem not in TINY_MODELS])
def test_model_file_binds_with_the_paper_run_and_matches_published_size(model_file):
    preset = pathlib.Path(model_file).stem
    _bind([model_file, "topologies/tpu_v5p_128.gin", "runs/symbol_tune.gin", "mixtures/symbol_rate_16.gin"],
          REQUIRED)
    model = _query("%MODEL")
    assert gin.query_parameter("models.build_model.preset") == preset
    assert model.config.dtype == "bfloat16" and model.config.param_dtype == "float32"
    count = _param_count(model)
    assert abs(count / PUBLISHED[preset] - 1) < 0.03, f"{preset}: {count:,} vs published {PUBLISHED[preset]:,.0f}"
    hf = _hf_count(model)
    if hf is not None:
        assert count == hf, f"{preset}: ours {count:,} vs HF transformers {hf:,}"


@pytest.mark.parametrize("model_file", [f"models/{m}.gin" for m in TINY_MODELS])
def test_tiny_model_file_binds_with_the_cpu_run(model_file):
    _bind([model_file, "runs/tiny_cpu.gin"], REQUIRED[:1])
    model = _query("%MODEL")
    assert model.config.dtype == "float32" and _param_count(model) < 1_000_000


@pytest.mark.parametrize("topology_file", _files("topologies"))
def test_topology_file_mesh_fills_its_chips_and_splits_the_paper_batch(topology_file):
    _bind([TOPOLOGY_CHECK_MODEL, topology_file, "runs/symbol_tune.gin", "mixtures/symbol_rate_0.gin"], REQUIRED)
    topology = gin.get_configurable("topologies.Topology")()
    mesh_config = _query("train.mesh_config")
    ici, dcn = partitioning.mesh_shape(mesh_config, topology.num_chips, topology.num_slices)
    sizes = [i * d for i, d in zip(ici, dcn)]
    assert math.prod(sizes) == topology.num_chips
    assert 32 % (sizes[0] * sizes[1]) == 0, f"{topology_file}: batch 32 over data x fsdp = {sizes[:2]}"
    assert topology.num_slices == dcn[0] * dcn[1] * dcn[2]
    assert topology_file.startswith(f"topologies/{topology.chip}_")


@pytest.mark.parametrize("mixture_file", _files("mixtures"))
def test_mixture_file_names_a_registered_mixture(mixture_file):
    import symbol_tuning.tasks  # noqa: F401 -- registers the mixtures
    from symbol_tuning.data.task_registry import MixtureRegistry

    _bind(["models/flan_t5_small.gin", "runs/symbol_tune.gin", mixture_file], REQUIRED)
    name = _query("train.mixture_or_task_name")
    assert name in MixtureRegistry.names()
    rate = pathlib.Path(mixture_file).stem.rsplit("_", 1)[-1]
    assert name.endswith(f"_{rate}")


def _paper_hyperparameters() -> dict:
    schedule = _query("train.learning_rate_fn")
    return {"batch": _query("train.batch_size"), "steps": _query("train.train_steps"),
            "lengths": _query("train.feature_lengths"), "pack": _query("train.pack"),
            "optimizer": gin.query_parameter("optimizers.make_optimizer.name"),
            "lr": [float(schedule(s)) for s in (0, 1000, 3999)], "model_dir": _query("train.model_dir")}


PAPER_HYPERPARAMETERS = {"batch": 32, "steps": 4000, "lengths": {"inputs": 2048, "targets": 512}, "pack": True,
                         "optimizer": "adafactor", "lr": pytest.approx([3e-3] * 3), "model_dir": "/tmp/unused"}


def test_symbol_tune_run_is_table_1_symbol_data_only_with_the_paper_hyperparameters():
    import symbol_tuning.tasks  # noqa: F401 -- registers the mixtures
    from symbol_tuning.data.specs import TUNING_DATASETS
    from symbol_tuning.data.task_registry import MixtureRegistry

    _bind(["models/flan_t5_xl.gin", "runs/symbol_tune.gin"], REQUIRED)
    assert _paper_hyperparameters() == PAPER_HYPERPARAMETERS
    name = _query("train.mixture_or_task_name")
    assert name == "mix:symbol_100"
    tasks = {task.name: rate for task, rate in MixtureRegistry.get(name).leaf_rates()}
    assert sorted(tasks) == sorted(f"symbol_tuning:{d}" for d in TUNING_DATASETS)  # no instruction data
    assert sum(tasks.values()) == pytest.approx(1.0)
    header = (GIN_DIR / "runs" / "symbol_tune.gin").read_text().splitlines()
    assert "--gin_file=mixtures/" not in header[0] and "Table-1 setting" in " ".join(header[:3])


def test_mix_ablation_run_trains_the_symbol_rate_grid_with_the_same_hyperparameters():
    from symbol_tuning.tasks.mixtures import SYMBOL_RATES

    first = (GIN_DIR / "runs" / "symbol_tune_mix_ablation.gin").read_text().splitlines()[0]
    rates = first.split("for r in ", 1)[1].split(";", 1)[0].split()
    assert [int(r) for r in rates] == list(SYMBOL_RATES)
    assert "--gin_file=runs/symbol_tune_mix_ablation.gin --gin_file=mixtures/symbol_rate_$r.gin" in first
    for rate in rates:
        _bind(["models/flan_t5_xl.gin", "runs/symbol_tune_mix_ablation.gin", f"mixtures/symbol_rate_{rate}.gin"],
              REQUIRED)
        assert _paper_hyperparameters() == PAPER_HYPERPARAMETERS
        assert _query("train.mixture_or_task_name") == f"mix:symbol_{rate}"
    with pytest.raises(gin_utils.GinConfigError, match="MIXTURE_OR_TASK_NAME"):
        _bind(["models/flan_t5_xl.gin", "runs/symbol_tune_mix_ablation.gin"], REQUIRED)


def test_540b_run_overrides_learning_rate_and_steps():
    _bind(["models/palm_540b.gin", "runs/symbol_tune_540b.gin", "mixtures/symbol_rate_100.gin"], REQUIRED)
    assert _query("train.train_steps") == 1000
    assert float(_query("train.learning_rate_fn")(0)) == pytest.approx(1e-3)
    assert _query("train.batch_size") == 32


def test_run_includes_resolve_with_a_runs_folder_in_the_working_directory(tmp_path, monkeypatch):
    """./runs (the demo's default output) is importable as a namespace package; gin's package reader
    must not crash on `include 'runs/symbol_tune.gin'` because of it."""
    (tmp_path / "runs" / "demo-1").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _bind(["models/palm_540b.gin", "runs/symbol_tune_540b.gin", "mixtures/symbol_rate_100.gin"], REQUIRED)
    assert _query("train.train_steps") == 1000


def test_tiny_cpu_run_binds_with_a_topology_after_it():
    _bind(["models/tiny_t5.gin", "runs/tiny_cpu.gin", "topologies/cpu_8.gin", "mixtures/embedded_symbol_50.gin"],
          REQUIRED[:1])
    assert _query("train.mesh_config") == partitioning.MeshConfig(ici_data=2, ici_fsdp=-1, ici_tensor=1)
    assert _query("train.mixture_or_task_name") == "embedded_symbol_50"


def test_run_file_without_its_required_macros_fails_naming_them():
    with pytest.raises(gin_utils.GinConfigError, match="MODEL_DIR"):
        _bind(["models/flan_t5_small.gin", "runs/symbol_tune.gin", "mixtures/symbol_rate_16.gin"],
              ["VOCABULARY = 'bytes'"])
    with pytest.raises(gin_utils.GinConfigError, match="MIXTURE_OR_TASK_NAME"):
        _bind(["models/flan_t5_small.gin", "runs/symbol_tune_mix_ablation.gin"], REQUIRED)

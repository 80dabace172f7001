"""The run record train writes into MODEL_DIR (config.gin, model_config.json) and what reads it: eval,
export-hf --checkpoint=<model_dir> --step=N, and INITIAL_CHECKPOINT_PATH from an Orbax training dir onto another
mesh; the host-count rules of resuming (data shards re-derived, or refused naming the warm start)."""
import json

import gin
import jax
import numpy as np
import pytest
from flax import traverse_util

from symbol_tuning import eval as eval_cli
from symbol_tuning import export_hf, train
from symbol_tuning.evaluation.checkpoint_loading import load_for_eval
from symbol_tuning.models.families import import_hf_checkpoint
from symbol_tuning.training import data_shards, partitioning

FLAGS = ["--gin_file=models/tiny_t5.gin", "--gin_file=runs/tiny_cpu.gin", "--gin.TRAIN_STEPS=2",
         "--gin.CHECKPOINT_EVERY=1", "--gin.LOG_EVERY=1"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("records") / "run"
    assert train.main([*FLAGS, f"--gin.MODEL_DIR='{path}'"]) == 0
    gin.clear_config()
    return path


def _flat(tree):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def test_train_writes_the_gin_config_and_model_config_once(model_dir):
    record = json.loads((model_dir / "model_config.json").read_text())
    assert record["family"] == "encoder_decoder" and record["config"]["vocab_size"] == 384
    text = (model_dir / "config.gin").read_text()
    assert "train.train_steps = %TRAIN_STEPS" in text and "MODEL_DIR = " in text


def test_same_model_dir_with_another_model_is_refused_naming_the_record(model_dir, capsys):
    rc = train.main([*FLAGS, f"--gin.MODEL_DIR='{model_dir}'", "--gin.models.build_model.overrides="
                     "{'vocab_size': 512, 'dtype': 'float32', 'dropout_rate': 0.0}"])
    gin.clear_config()
    assert rc == 1
    assert "model_config.json: this MODEL_DIR holds a run of another model" in capsys.readouterr().err


def test_eval_and_export_read_the_record_of_a_training_dir(model_dir, tmp_path):
    out = tmp_path / "eval"
    assert eval_cli.main([f"--checkpoint={model_dir}", "--step=2", "--suite=embedded", "--datasets=product_review",
                          "--settings=neither", "--max_queries=2", "--k_per_class=1", "--max_input_length=512",
                          "--min_prompt_bucket=512", "--batch_size=2", f"--output_dir={out}"]) == 0
    assert (out / "step_2" / "summary.json").exists()
    assert export_hf.main([f"--checkpoint={model_dir}", "--step=1", f"--out={tmp_path / 'hf'}"]) == 0
    _, exported = import_hf_checkpoint(str(tmp_path / "hf"))
    want = _flat(load_for_eval(str(model_dir), step=1).params)
    got = _flat(exported)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-6, err_msg=name)


def test_init_checkpoint_takes_the_params_of_an_orbax_dir_onto_another_mesh(model_dir):
    model = train.build_model(family="encoder_decoder", preset="tiny",
                              overrides={"vocab_size": 384, "dtype": "float32", "dropout_rate": 0.0})
    mesh = partitioning.create_mesh(partitioning.MeshConfig(ici_data=1, ici_fsdp=-1))
    params = train.load_init_params(str(model_dir), model=model, mesh=mesh, rules=partitioning.DEFAULT_RULES)
    first = train.load_init_params(str(model_dir / "1"), model=model, mesh=mesh, rules=partitioning.DEFAULT_RULES)
    latest = _flat(load_for_eval(str(model_dir), step=2).params)
    step_1 = _flat(load_for_eval(str(model_dir), step=1).params)
    sharded = [x for x in jax.tree_util.tree_leaves(params) if len(x.sharding.device_set) == 8
               and any(axis == "fsdp" for axis in x.sharding.spec if axis)]
    assert sharded, "no parameter was laid out over the fsdp axis"
    for name, value in _flat(params).items():
        np.testing.assert_array_equal(value, latest[name], err_msg=name)
    for name, value in _flat(first).items():
        np.testing.assert_array_equal(value, step_1[name], err_msg=name)


def test_input_positions_regroup_for_any_host_count_dividing_the_shards():
    saved = [{"kind": "data_shards", "num_shards": 4, "shards": {"0": {"p": 0}, "1": {"p": 1}}},
             {"kind": "data_shards", "num_shards": 4, "shards": {"2": {"p": 2}, "3": {"p": 3}}}]
    assert data_shards.regroup(saved, 0, 1, source="d") == {
        "kind": "data_shards", "num_shards": 4, "shards": {str(i): {"p": i} for i in range(4)}}
    assert data_shards.regroup(saved, 3, 4, source="d")["shards"] == {"3": {"p": 3}}
    with pytest.raises(ValueError, match=r"4 data shards, which 3 hosts cannot split.*INITIAL_CHECKPOINT_PATH=\"'d'\""):
        data_shards.regroup(saved, 0, 3, source="d")
    with pytest.raises(ValueError, match=r"per-host input positions.*INITIAL_CHECKPOINT_PATH"):
        data_shards.regroup([{"position": 3}, {"position": 4}], 0, 1, source="d")

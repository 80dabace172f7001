"""The train CLI's T5X-style gin flags: files, macros, bindings, search paths and their errors."""
import os
import pathlib
import subprocess
import sys

import gin
import pytest

from symbol_tuning import gin_utils, train

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_macro_flags_become_bindings_in_both_spellings():
    rest, bindings = gin_utils.split_macro_flags(
        ["--gin.MODEL_DIR='/tmp/x'", "--gin_file=a.gin", "--gin.TRAIN_STEPS", "20", "--gin.train.seed=3"])
    assert rest == ["--gin_file=a.gin"]
    assert bindings == ["MODEL_DIR = '/tmp/x'", "TRAIN_STEPS = 20", "train.seed = 3"]


def test_gin_file_macros_and_bindings_parse_with_later_values_winning(tmp_path):
    parser = train.build_parser()
    rest, macros = gin_utils.split_macro_flags(
        ["--gin_file=models/tiny_decoder.gin", "--gin_file=runs/tiny_cpu.gin", "--gin.MODEL_DIR='/tmp/run'",
         "--gin.TRAIN_STEPS=7", "--gin_bindings=train.seed = 5", "--gin_bindings=LEARNING_RATE = 0.01"])
    args = parser.parse_args(rest)
    gin_utils.parse_gin_flags(args, macros)
    assert gin.query_parameter("MODEL_DIR/macro.value") == "/tmp/run"
    assert gin.query_parameter("TRAIN_STEPS/macro.value") == 7
    assert gin.query_parameter("train.seed") == 5
    assert gin.query_parameter("LEARNING_RATE/macro.value") == 0.01
    assert gin.query_parameter("models.build_model.family") == "decoder_only"


def test_search_paths_find_relative_gin_files_first(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mine.gin").write_text("include 'models/tiny_t5.gin'\ntrain.batch_size = 16\n")
    args = train.build_parser().parse_args([f"--gin_search_paths={tmp_path}", "--gin_file=runs/mine.gin"])
    paths = gin_utils.parse_gin_flags(args)
    assert paths[0] == str(tmp_path)
    assert any(p.endswith("gin_configs") for p in paths[1:])  # the package's own configs are always searched
    assert gin.query_parameter("train.batch_size") == 16
    assert gin.query_parameter("models.build_model.family") == "encoder_decoder"  # include found via defaults


def test_missing_required_macro_fails_naming_it(capsys):
    rc = train.main(["--gin_file=models/tiny_t5.gin", "--gin_file=runs/tiny_cpu.gin"])
    assert rc == 2
    assert "MODEL_DIR" in capsys.readouterr().err


def test_missing_gin_file_and_bad_binding_are_named():
    with pytest.raises(gin_utils.GinConfigError, match="--gin_file nope.gin: not found"):
        gin_utils.parse_gin(gin_files=["nope.gin"])
    with pytest.raises(gin_utils.GinConfigError, match="gin binding 'no_such_fn.x = 1'"):
        gin_utils.parse_gin(gin_bindings=["no_such_fn.x = 1"])
    with pytest.raises(gin_utils.GinConfigError, match="--gin_search_paths: .*missing_dir is not a folder"):
        gin_utils.parse_gin(search_paths="/tmp/missing_dir")


def test_unknown_flag_exits_nonzero_naming_it():
    proc = subprocess.run([sys.executable, "-m", "symbol_tuning.train", "--gin_file=runs/tiny_cpu.gin",
                           "--learning_rate=3"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 2
    assert "unrecognized flags: --learning_rate=3" in proc.stderr


def test_build_model_rejects_unknown_family_and_needs_one_source():
    with pytest.raises(ValueError, match="family='t6'"):
        train.build_model(family="t6", preset="tiny")
    with pytest.raises(ValueError, match="exactly one of preset= and config_file="):
        train.build_model(family="decoder_only")
    model = train.build_model(family="encoder_decoder", preset="tiny", overrides={"vocab_size": 384})
    assert model.family == "encoder_decoder" and model.config.vocab_size == 384

"""Reliability of weight files: a truncated or header-damaged safetensors file, an index naming a .bin shard,
and integer tensors where float weights belong fail on every load path (import-hf, INITIAL_CHECKPOINT_PATH, eval of a
native dir) with an error naming the file (and the tensor) and what is wrong, and nothing is written."""
import json
import os
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from test_evaluation import T5_CFG, _params, t5_model
from test_hf_cli import tiny_hf

from symbol_tuning import eval as eval_cli
from symbol_tuning import import_hf, train
from symbol_tuning.evaluation import checkpoint_loading
from symbol_tuning.models import safetensors_io
from symbol_tuning.models.native_io import PARAMS_NAME, save_native
from symbol_tuning.models.safetensors_io import DamagedFileError


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def _damage_header(path):
    data = bytearray(path.read_bytes())
    data[8:20] = b"\x00garbage\xff\xfe{{"
    path.write_bytes(bytes(data))


def _huge_header_length(path):
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 10 * len(data)) + data[8:])


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return tiny_hf(tmp_path_factory.mktemp("hf"), "llama")[0]


def _hf_copy(hf_dir, tmp_path):
    import shutil

    dst = tmp_path / "hf"
    shutil.copytree(hf_dir, dst)
    return dst


@pytest.mark.parametrize("damage,message", [(_truncate, "truncated"), (_damage_header, "damaged safetensors header"),
                                            (_huge_header_length, "exceeds the file")])
def test_import_hf_of_a_damaged_safetensors_file_exits_1_naming_the_file(hf_dir, tmp_path, capsys, damage, message):
    hf = _hf_copy(hf_dir, tmp_path)
    damage(hf / "model.safetensors")
    assert import_hf.main([f"--hf_dir={hf}", f"--out={tmp_path / 'out'}"]) == 1
    err = capsys.readouterr().err
    assert f"{hf / 'model.safetensors'}:" in err and message in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_integer_tensor_is_refused_naming_the_tensor(hf_dir, tmp_path, capsys):
    hf = _hf_copy(hf_dir, tmp_path)
    tensors = load_file(str(hf / "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].astype(np.int32)
    save_file(tensors, str(hf / "model.safetensors"))
    assert import_hf.main([f"--hf_dir={hf}", f"--out={tmp_path / 'out'}"]) == 1
    err = capsys.readouterr().err
    assert f"tensor {name!r} has dtype I32; weights must be floats (BF16, F16, F32, F64)" in err
    assert not (tmp_path / "out").exists()


def test_an_index_pointing_at_a_bin_shard_is_refused_naming_the_entry(hf_dir, tmp_path, capsys):
    hf = _hf_copy(hf_dir, tmp_path)
    names = sorted(load_file(str(hf / "model.safetensors")))
    (hf / safetensors_io.INDEX_NAME).write_text(json.dumps(
        {"weight_map": {n: "pytorch_model-00001-of-00001.bin" for n in names}}))
    assert import_hf.main([f"--hf_dir={hf}", f"--out={tmp_path / 'out'}"]) == 1
    err = capsys.readouterr().err
    assert "maps to 'pytorch_model-00001-of-00001.bin', not a .safetensors file" in err
    assert safetensors_io.INDEX_NAME in err


@pytest.fixture(scope="module")
def native_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("native") / "native"
    save_native(T5_CFG, _params(t5_model(T5_CFG)), str(path))
    return path


def _native_copy(native_dir, tmp_path):
    import shutil

    dst = tmp_path / "native"
    shutil.copytree(native_dir, dst)
    return dst


@pytest.mark.parametrize("damage,message", [(_truncate, "truncated"), (_damage_header, "damaged safetensors header")])
def test_eval_and_init_checkpoint_of_a_damaged_native_dir_name_the_file(native_dir, tmp_path, capsys, damage,
                                                                        message):
    native = _native_copy(native_dir, tmp_path)
    damage(native / PARAMS_NAME)
    with pytest.raises(DamagedFileError, match=message) as info:
        checkpoint_loading.load_for_eval(str(native))
    assert str(native / PARAMS_NAME) in str(info.value)
    with pytest.raises(DamagedFileError, match=message):  # the INITIAL_CHECKPOINT_PATH path of the train command
        train.load_init_params(str(native))
    out = tmp_path / "eval"
    argv = [f"--checkpoint={native}", "--suite=embedded", "--datasets=product_review", "--settings=neither",
            "--max_queries=2", "--k_per_class=1", f"--output_dir={out}"]
    assert eval_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert str(native / PARAMS_NAME) in err and message in err and not out.exists()


def test_an_undamaged_file_reads_the_same_tensors_as_safetensors(native_dir):
    header = safetensors_io.read_header(str(native_dir / PARAMS_NAME))
    reference = load_file(str(native_dir / PARAMS_NAME))
    assert {k: v[1] for k, v in header.items()} == {k: v.shape for k, v in reference.items()}
    assert os.path.getsize(native_dir / PARAMS_NAME) > 8

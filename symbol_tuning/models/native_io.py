"""Our native params-only checkpoint: DIR/config.json ({"family", "config"}) and DIR/params.safetensors
with "/"-joined parameter paths. Written into a temporary sibling directory renamed at the end.
"""
from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import save_file

from symbol_tuning.models.families import config_from_record, config_record, import_hf_checkpoint
from symbol_tuning.models.layers import convert_layer_layout
from symbol_tuning.models.safetensors_io import open_checked, read_json_file, write_directory_atomically

CONFIG_NAME = "config.json"
PARAMS_NAME = "params.safetensors"
DTYPES = {"float32": np.float32, "float16": np.float16}


def save_native(config: Any, params: Any, directory: str, *, dtype: str = "float32") -> None:
    """Write (config, params) to `directory`, which must not exist or be empty."""
    if dtype not in DTYPES:
        raise ValueError(f"save_native: dtype {dtype!r} not in {sorted(DTYPES)}")
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and os.listdir(directory):
        raise FileExistsError(f"{directory}: output directory exists and is not empty")
    record = config_record(config)
    flat = traverse_util.flatten_dict(nn.meta.unbox(params), sep="/")
    tensors = {k: np.ascontiguousarray(np.asarray(v, DTYPES[dtype])) for k, v in flat.items()}

    def write(tmp: str) -> None:
        save_file(tensors, os.path.join(tmp, PARAMS_NAME), metadata={"format": "symbol_tuning"})
        with open(os.path.join(tmp, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)

    write_directory_atomically(directory, write, prefix=".native-")


def load_native(directory: str, *, scan_layers: bool | None = None) -> tuple[Any, dict]:
    """(config, nested float32 numpy params) from a directory written by save_native.

    `scan_layers` True / False returns the params in that layer layout (and the config saying so),
    whichever layout the checkpoint was saved in; None keeps the saved one.
    """
    cfg_file = os.path.join(directory, CONFIG_NAME)
    params_file = os.path.join(directory, PARAMS_NAME)
    for file in (cfg_file, params_file):
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: missing from native checkpoint {directory}")
    meta = read_json_file(cfg_file)
    config = config_from_record(meta, source=cfg_file)
    flat = {}
    with open_checked(params_file) as f:
        for name in f.keys():
            flat[tuple(name.split("/"))] = f.get_tensor(name).astype(np.float32)
    params = traverse_util.unflatten_dict(flat)
    if scan_layers is not None and bool(scan_layers) != bool(config.scan_layers):
        params = jax.tree.map(np.asarray, convert_layer_layout(params, scan_layers=bool(scan_layers)))
        config = config.replace(scan_layers=bool(scan_layers))
    return config, params


def checkpoint_kind(directory: str) -> str:
    """"native" or "hf": which kind of checkpoint directory `directory` holds, told by its config.json
    ("family" for ours, "model_type" for HF's); ValueError naming the file otherwise."""
    cfg_file = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(cfg_file):
        raise FileNotFoundError(f"{directory}: no {CONFIG_NAME}")
    meta = read_json_file(cfg_file)
    if isinstance(meta, dict) and "family" in meta:
        return "native"
    if isinstance(meta, dict) and "model_type" in meta:
        return "hf"
    raise ValueError(f"{cfg_file}: neither a native checkpoint config (no 'family') nor an HF config "
                     f"(no 'model_type')")


def load_params_dir(directory: str) -> tuple[Any, Any]:
    """(config, params) from a native or an HF checkpoint directory (see checkpoint_kind)."""
    if checkpoint_kind(directory) == "native":
        return load_native(directory)
    return import_hf_checkpoint(directory)

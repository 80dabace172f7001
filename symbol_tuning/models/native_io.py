"""Our native params-only checkpoint: DIR/config.json ({"family", "config"}) and DIR/params.safetensors
with "/"-joined parameter paths. Written into a temporary sibling directory renamed at the end.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from symbol_tuning.models.safetensors_io import write_directory_atomically

CONFIG_NAME = "config.json"
PARAMS_NAME = "params.safetensors"
DTYPES = {"float32": np.float32, "float16": np.float16}


def family_of(config: Any) -> str:
    """'decoder_only' for DecoderConfig, 'encoder_decoder' for T5Config."""
    name = type(config).__name__
    if name == "DecoderConfig":
        return "decoder_only"
    if name == "T5Config":
        return "encoder_decoder"
    raise TypeError(f"save_native: unknown config type {name}")


def _config_from(family: str, values: dict, source: str) -> Any:
    if family == "decoder_only":
        from symbol_tuning.models.decoder import DecoderConfig
        return DecoderConfig.from_dict(values)
    if family == "encoder_decoder":
        from symbol_tuning.models.t5 import T5Config
        return T5Config.from_dict(values)
    raise ValueError(f"{source}: unknown family {family!r} (expected 'decoder_only' or 'encoder_decoder')")


def save_native(config: Any, params: Any, directory: str, *, dtype: str = "float32") -> None:
    """Write (config, params) to `directory`, which must not exist or be empty."""
    if dtype not in DTYPES:
        raise ValueError(f"save_native: dtype {dtype!r} not in {sorted(DTYPES)}")
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and os.listdir(directory):
        raise FileExistsError(f"{directory}: output directory exists and is not empty")
    values = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
    flat = traverse_util.flatten_dict(nn.meta.unbox(params), sep="/")
    tensors = {k: np.ascontiguousarray(np.asarray(v, DTYPES[dtype])) for k, v in flat.items()}

    def write(tmp: str) -> None:
        save_file(tensors, os.path.join(tmp, PARAMS_NAME), metadata={"format": "symbol_tuning"})
        with open(os.path.join(tmp, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump({"family": family_of(config), "config": values}, f, indent=2)

    write_directory_atomically(directory, write, prefix=".native-")


def load_native(directory: str) -> tuple[Any, dict]:
    """(config, nested float32 numpy params) from a directory written by save_native."""
    cfg_file = os.path.join(directory, CONFIG_NAME)
    params_file = os.path.join(directory, PARAMS_NAME)
    for file in (cfg_file, params_file):
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: missing from native checkpoint {directory}")
    try:
        with open(cfg_file, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: not valid JSON (line {e.lineno}: {e.msg})") from e
    for key in ("family", "config"):
        if key not in meta:
            raise ValueError(f"{cfg_file}: missing field {key!r}")
    config = _config_from(meta["family"], meta["config"], cfg_file)
    flat = {}
    with safe_open(params_file, framework="numpy") as f:
        for name in f.keys():
            flat[tuple(name.split("/"))] = f.get_tensor(name).astype(np.float32)
    return config, traverse_util.unflatten_dict(flat)

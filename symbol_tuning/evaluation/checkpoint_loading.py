"""Checkpoints for evaluation: load a native, HF or Orbax training checkpoint and check it against the model
config before any compute.

Kinds of `path` understood by `load_for_eval`:
- native: config.json with "family" + params.safetensors (models.native_io);
- HF: config.json with a model_type of the family table (models.families);
- Orbax training dir (training.checkpoints layout): only the params are read; the model config comes
  from `model_config` or a native-style config.json / model_config.json (the run record `train` writes).
Paths may be local or gs:// (training.storage).
Every tensor's shape is compared with the shapes the model config implies; the first mismatch raises
CheckpointMismatchError naming the tensor, before arrays are read (native, Orbax) and before any compute.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from jax.sharding import SingleDeviceSharding

from symbol_tuning.models.base import BaseModel
from symbol_tuning.models.families import config_from_record, import_hf_checkpoint, init_shapes, model_for
from symbol_tuning.models.native_io import PARAMS_NAME, checkpoint_kind, load_native
from symbol_tuning.models.safetensors_io import CheckpointMismatchError, read_header, read_json_file
from symbol_tuning.training import checkpoint_integrity, checkpoints, storage
from symbol_tuning.training.partitioning import logical_shardings

CONFIG_FILES = ("config.json", "model_config.json")


@dataclasses.dataclass
class LoadedModel:
    """A model wrapper, its params (placed on devices) and where they came from."""

    model: BaseModel
    params: Any
    config: Any
    kind: str  # "native", "hf" or "orbax"
    step: int | None = None


def abstract_params(model: BaseModel) -> Any:
    """Boxed abstract params (shapes, dtypes, logical axis names) without allocating."""
    shapes = init_shapes(model.family, 1, 8)
    boxed = jax.eval_shape(lambda rng: model.get_initial_variables(rng, shapes), jax.random.PRNGKey(0))
    return boxed["params"]


def expected_shapes(model: BaseModel) -> dict[str, tuple[int, ...]]:
    """'/'-joined parameter path -> shape implied by the model config."""
    flat = traverse_util.flatten_dict(nn.meta.unbox(abstract_params(model)), sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def check_shapes(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], *, source: str) -> None:
    """Raise CheckpointMismatchError naming the first missing, unexpected or mis-shaped tensor."""
    for name, shape in expected.items():
        if name not in found:
            raise CheckpointMismatchError(f"{source}: tensor {name!r} (shape {shape}) required by the model config "
                                          f"is missing from the checkpoint")
        if tuple(found[name]) != tuple(shape):
            raise CheckpointMismatchError(f"{source}: tensor {name!r} has shape {tuple(found[name])} in the "
                                          f"checkpoint but the model config needs {tuple(shape)}")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise CheckpointMismatchError(f"{source}: tensor {extra[0]!r} is in the checkpoint but not in the model "
                                      f"config ({len(extra)} unexpected tensors)")


def config_from_file(path: str) -> Any:
    """A model config from a native-style JSON file ({"family": "encoder_decoder" | "decoder_only", "config"}),
    local or gs://."""
    if storage.is_remote(path):
        return config_from_record(storage.read_json(path), source=path)
    return config_from_record(read_json_file(path), source=path)


def native_config(directory: str) -> Any | None:
    """The model config of a native-style config.json / model_config.json (a training run's record) in
    `directory`, if there is one."""
    root = storage.resolve(directory, what="checkpoint")
    for name in CONFIG_FILES:
        path = root / name
        if path.is_file() and "family" in storage.read_json(path):
            return config_from_file(os.fspath(path))
    return None


def _placed(model: BaseModel, params: Any, mesh, rules) -> Any:
    if mesh is None or rules is None:
        return jax.tree_util.tree_map(jax.numpy.asarray, params)
    shardings = logical_shardings(abstract_params(model), mesh, rules)
    return jax.tree_util.tree_map(lambda x, s: jax.device_put(np.asarray(x), s), params, shardings)


def _load_native(path: str, model_config: Any, mesh, rules) -> LoadedModel:
    config = model_config if model_config is not None else native_config(path)
    model = model_for(config)
    found = {name: shape for name, (_, shape) in read_header(os.path.join(path, PARAMS_NAME)).items()}
    check_shapes(found, expected_shapes(model), source=path)
    _, params = load_native(path)
    return LoadedModel(model, _placed(model, params, mesh, rules), config, "native")


def _load_hf(path: str, model_config: Any, mesh, rules) -> LoadedModel:
    config, params = import_hf_checkpoint(path)
    model = model_for(model_config if model_config is not None else config)
    flat = traverse_util.flatten_dict(nn.meta.unbox(params), sep="/")
    check_shapes({k: tuple(np.shape(v)) for k, v in flat.items()}, expected_shapes(model), source=path)
    return LoadedModel(model, _placed(model, params, mesh, rules), model.config, "hf")


def _load_orbax(path: str, step: int | None, model_config: Any, mesh, rules) -> LoadedModel:
    steps = checkpoints.finished_steps(path)
    if not steps:
        raise FileNotFoundError(f"{path}: no native/HF config.json and no Orbax checkpoint steps")
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise FileNotFoundError(f"{path}: no checkpoint for step {step}; available steps: {steps}")
    verdict = checkpoint_integrity.check_readable(path, step)
    config = model_config if model_config is not None else native_config(path)
    if config is None:
        raise ValueError(f"{path}: an Orbax training directory holds no model config (no model_config.json, "
                         f"which `train` writes); pass model_config (or --model_config)")
    model = model_for(config)
    meta = checkpoints.saved_params_metadata(path, step)
    check_shapes({k: tuple(v.shape) for k, v in meta.items()}, expected_shapes(model),
                 source=f"{path}/{step}/{checkpoints.STATE_ITEM}")
    if mesh is not None and rules is not None:
        shardings = traverse_util.flatten_dict(logical_shardings(abstract_params(model), mesh, rules), sep="/")
    else:
        shardings = {k: SingleDeviceSharding(jax.devices()[0]) for k in meta}
    abstract = {k: jax.ShapeDtypeStruct(tuple(v.shape), v.dtype, sharding=shardings[k]) for k, v in meta.items()}
    try:
        params = checkpoints.restore_params(path, step, abstract)
    except Exception as e:  # noqa: BLE001 - TensorStore raises a bare Exception for unreadable array files
        if verdict.status == "ok":
            raise
        raise checkpoint_integrity.DamagedCheckpointError(
            step, os.path.join(path, str(step), checkpoints.STATE_ITEM),
            f"no checksum manifest, and its arrays cannot be read ({str(e).splitlines()[0][:300]})") from None
    return LoadedModel(model, params, config, "orbax", step)


def load_for_eval(path: str, *, model_config: Any = None, step: int | None = None, mesh=None,
                  rules=None) -> LoadedModel:
    """Load any checkpoint kind (see the module docstring) ready for evaluation.

    model_config: the config the checkpoint must match (required for an Orbax dir without a config file);
    step: the Orbax step (latest when None); mesh + rules: place params with the logical shardings.
    """
    root = storage.resolve(path, what="checkpoint")
    if not root.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    path = os.fspath(root)
    if (root / "config.json").is_file() and not checkpoints.finished_steps(path):
        # safetensors and the HF readers read local files only: a gs:// native/HF dir is copied first.
        def load(local: str) -> LoadedModel:
            if checkpoint_kind(local) == "native":
                return _load_native(local, model_config, mesh, rules)
            return _load_hf(local, model_config, mesh, rules)
        return storage.with_local_copy(path, load)
    return _load_orbax(path, step, model_config, mesh, rules)


"""Checkpoints for evaluation: load a native, HF or Orbax training checkpoint, check it against the model
config before any compute, and evaluate every step of a training directory (T5X mode='all').

Kinds of `path` understood by `load_for_eval`:
- native: config.json with "family" + params.safetensors (models.native_io);
- HF: config.json with model_type t5 / llama / qwen2 / mistral (import_hf dispatch);
- Orbax training dir (checkpoints.Checkpointer layout <dir>/<step>/state): only the params subtree is
  read; the model config comes from `model_config` or a native-style config.json / model_config.json
  in the directory.
Every tensor's shape is compared with the shapes the model config implies; the first mismatch raises
CheckpointMismatchError naming the tensor, before arrays are read (native, Orbax) and before any compute.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from symbol_tuning.models.base import BaseModel
from symbol_tuning.models.safetensors_io import CheckpointMismatchError, read_json_file

log = logging.getLogger(__name__)
CONFIG_FILES = ("config.json", "model_config.json")


@dataclasses.dataclass
class LoadedModel:
    """A model wrapper, its params (placed on devices) and where they came from."""

    model: BaseModel
    params: Any
    config: Any
    kind: str  # "native", "hf" or "orbax"
    step: int | None = None


def model_for(config: Any) -> BaseModel:
    """The BaseModel wrapper of a T5Config or DecoderConfig."""
    name = type(config).__name__
    if name == "T5Config":
        from symbol_tuning.models.t5_model import model_from_config
    elif name == "DecoderConfig":
        from symbol_tuning.models.decoder_model import model_from_config
    else:
        raise TypeError(f"model_config: expected a T5Config or DecoderConfig, got {name}")
    return model_from_config(config)


def _input_shapes(model: BaseModel) -> dict[str, tuple[int, ...]]:
    if model.family == "encoder_decoder":
        return {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)}
    return {"decoder_input_tokens": (1, 8)}


def abstract_params(model: BaseModel) -> Any:
    """Boxed abstract params (shapes, dtypes, logical axis names) without allocating."""
    boxed = jax.eval_shape(lambda rng: model.get_initial_variables(rng, _input_shapes(model)), jax.random.PRNGKey(0))
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
    """A model config from a native-style JSON file ({"family": "encoder_decoder" | "decoder_only", "config"})."""
    meta = read_json_file(path)
    if not isinstance(meta, dict) or "family" not in meta or "config" not in meta:
        raise ValueError(f"{path}: a model config file needs 'family' and 'config' fields")
    if meta["family"] == "encoder_decoder":
        from symbol_tuning.models.t5 import T5Config
        return T5Config.from_dict(meta["config"])
    if meta["family"] == "decoder_only":
        from symbol_tuning.models.decoder import DecoderConfig
        return DecoderConfig.from_dict(meta["config"])
    raise ValueError(f"{path}: family {meta['family']!r} is not 'encoder_decoder' or 'decoder_only'")


def native_config(directory: str) -> Any | None:
    """The model config of a native-style config.json / model_config.json in `directory`, if there is one."""
    for name in CONFIG_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path) and "family" in read_json_file(path):
            return config_from_file(path)
    return None


def _placed(model: BaseModel, params: Any, mesh, rules) -> Any:
    if mesh is None or rules is None:
        return jax.tree_util.tree_map(jax.numpy.asarray, params)
    from symbol_tuning.partitioning import logical_shardings

    shardings = logical_shardings(abstract_params(model), mesh, rules)
    return jax.tree_util.tree_map(lambda x, s: jax.device_put(np.asarray(x), s), params, shardings)


def _load_native(path: str, model_config: Any, mesh, rules) -> LoadedModel:
    from safetensors import safe_open

    from symbol_tuning.models.native_io import PARAMS_NAME, load_native

    config = model_config if model_config is not None else native_config(path)
    model = model_for(config)
    with safe_open(os.path.join(path, PARAMS_NAME), framework="numpy") as f:
        found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    check_shapes(found, expected_shapes(model), source=path)
    _, params = load_native(path)
    return LoadedModel(model, _placed(model, params, mesh, rules), config, "native")


def _load_hf(path: str, model_config: Any, mesh, rules) -> LoadedModel:
    from symbol_tuning.import_hf import import_checkpoint

    config, params = import_checkpoint(path)
    model = model_for(model_config if model_config is not None else config)
    flat = traverse_util.flatten_dict(nn.meta.unbox(params), sep="/")
    check_shapes({k: tuple(np.shape(v)) for k, v in flat.items()}, expected_shapes(model), source=path)
    return LoadedModel(model, _placed(model, params, mesh, rules), model.config, "hf")


def checkpoint_steps(model_dir: str) -> list[int]:
    """Finished Orbax steps in a training directory (numeric subdirectories holding a state item)."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir}: checkpoint directory does not exist")
    return sorted(int(d) for d in os.listdir(model_dir)
                  if d.isdigit() and os.path.isdir(os.path.join(model_dir, d, "state")))


def _load_orbax(path: str, step: int | None, model_config: Any, mesh, rules) -> LoadedModel:
    import orbax.checkpoint as ocp
    from jax.sharding import SingleDeviceSharding

    steps = checkpoint_steps(path)
    if not steps:
        raise FileNotFoundError(f"{path}: no native/HF config.json and no Orbax checkpoint steps")
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise FileNotFoundError(f"{path}: no checkpoint for step {step}; available steps: {steps}")
    config = model_config if model_config is not None else native_config(path)
    if config is None:
        raise ValueError(f"{path}: an Orbax training directory holds no model config; pass model_config "
                         f"(or --model_config) or put a native config.json beside the steps")
    model = model_for(config)
    state_dir = os.path.join(path, str(step), "state")
    tree = ocp.StandardCheckpointer().metadata(state_dir).item_metadata
    tree = getattr(tree, "tree", tree)
    if "params" not in tree:
        raise CheckpointMismatchError(f"{state_dir}: the saved state has no 'params' item (has {sorted(tree)})")
    meta = traverse_util.flatten_dict(dict(tree["params"]), sep="/")
    check_shapes({k: tuple(v.shape) for k, v in meta.items()}, expected_shapes(model), source=state_dir)
    if mesh is not None and rules is not None:
        from symbol_tuning.partitioning import logical_shardings

        shardings = traverse_util.flatten_dict(logical_shardings(abstract_params(model), mesh, rules), sep="/")
    else:
        shardings = {k: SingleDeviceSharding(jax.devices()[0]) for k in meta}
    abstract = {k: jax.ShapeDtypeStruct(tuple(v.shape), v.dtype, sharding=shardings[k]) for k, v in meta.items()}
    restore_args = {k: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype)
                    for k, a in abstract.items()}
    item = {"params": traverse_util.unflatten_dict(abstract, sep="/")}
    args = {"params": traverse_util.unflatten_dict(restore_args, sep="/")}
    restored = ocp.PyTreeCheckpointer().restore(
        state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True))
    return LoadedModel(model, restored["params"], config, "orbax", step)


def load_for_eval(path: str, *, model_config: Any = None, step: int | None = None, mesh=None,
                  rules=None) -> LoadedModel:
    """Load any checkpoint kind (see the module docstring) ready for evaluation.

    model_config: the config the checkpoint must match (required for an Orbax dir without a config file);
    step: the Orbax step (latest when None); mesh + rules: place params with the logical shardings.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    cfg_file = os.path.join(path, "config.json")
    if os.path.isfile(cfg_file) and not checkpoint_steps(path):
        meta = read_json_file(cfg_file)
        if "family" in meta:
            return _load_native(path, model_config, mesh, rules)
        if "model_type" in meta:
            return _load_hf(path, model_config, mesh, rules)
        raise ValueError(f"{cfg_file}: neither a native checkpoint config (no 'family') nor an HF config "
                         f"(no 'model_type')")
    return _load_orbax(path, step, model_config, mesh, rules)


def evaluate_all_checkpoints(model_dir: str, *, suite, vocabulary, output_dir: str, model_config: Any = None,
                             settings=None, seed: int = 0, k_per_class: int = 4, max_input_length: int = 2048,
                             batch_size: int = 8, mesh=None, rules=None, steps=None, label: str = "model",
                             min_prompt_bucket: int = 64) -> dict[int, dict]:
    """Evaluate every Orbax step of `model_dir` (or `steps`), skipping steps whose summary already exists
    in output_dir; returns step -> summary for all steps (read back for skipped ones) and writes the
    across-step overview (results.csv / results.md / plots)."""
    from symbol_tuning import evaluation, reporting

    settings = evaluation.check_settings(settings)
    available = checkpoint_steps(model_dir)
    if not available:
        raise FileNotFoundError(f"{model_dir}: no Orbax checkpoint steps (<dir>/<step>/state) to evaluate")
    todo = available if steps is None else [int(s) for s in steps]
    missing = [s for s in todo if s not in available]
    if missing:
        raise FileNotFoundError(f"{model_dir}: no checkpoint for steps {missing}; available: {available}")
    out: dict[int, dict] = {}
    for step in todo:
        if reporting.step_done(output_dir, step):
            log.info("step %d: results exist in %s, skipped", step, output_dir)
            out[step] = read_json_file(os.path.join(reporting.step_dir(output_dir, step), reporting.STEP_SUMMARY))
            continue
        loaded = load_for_eval(model_dir, model_config=model_config, step=step, mesh=mesh, rules=rules)
        result = evaluation.evaluate(loaded.model, loaded.params, suite, vocabulary=vocabulary, settings=settings,
                                     seed=seed, k_per_class=k_per_class, max_input_length=max_input_length,
                                     batch_size=batch_size, mesh=mesh, min_prompt_bucket=min_prompt_bucket)
        reporting.write_step_results(output_dir, step=step, records=result.records, summary=result.summary,
                                     model=label)
        out[step] = result.summary
    reporting.write_overview(output_dir, out, model=label)
    return out

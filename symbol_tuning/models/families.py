"""The model-family table: one place that knows, for each family, its config class, its model wrapper,
its HF importer and exporter (and which HF `model_type`s it reads) and the token features its
parameters are initialised from. Commands, checkpoint loaders and the planner dispatch through it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from symbol_tuning.models import hf_llama, hf_t5
from symbol_tuning.models.base import BaseModel
from symbol_tuning.models.decoder import DecoderConfig
from symbol_tuning.models.decoder_model import DecoderOnlyModel
from symbol_tuning.models.safetensors_io import read_hf_config
from symbol_tuning.models.t5 import T5Config
from symbol_tuning.models.t5_model import EncoderDecoderModel


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """What the code needs to know about one model family."""

    name: str
    config_cls: type
    model_cls: Callable[[Any], BaseModel]
    hf_model_types: tuple[str, ...]
    import_hf: Callable[[str], tuple[Any, Any]]  # HF checkpoint dir -> (config, params)
    export_hf: Callable[[Any, Any, str], None]  # (config, params, out dir) -> an HF checkpoint
    init_features: tuple[str, ...]  # token features get_initial_variables needs shapes for


FAMILIES: dict[str, ModelFamily] = {
    "encoder_decoder": ModelFamily(
        name="encoder_decoder", config_cls=T5Config, model_cls=EncoderDecoderModel, hf_model_types=("t5",),
        import_hf=hf_t5.import_t5, export_hf=hf_t5.export_t5,
        init_features=("encoder_input_tokens", "decoder_input_tokens")),
    "decoder_only": ModelFamily(
        name="decoder_only", config_cls=DecoderConfig, model_cls=DecoderOnlyModel,
        hf_model_types=("llama", "qwen2", "mistral"), import_hf=hf_llama.import_llama, export_hf=hf_llama.export_llama,
        init_features=("decoder_input_tokens",)),
}


def get_family(name: str, *, source: str = "family") -> ModelFamily:
    """The family called `name`; ValueError naming `source` (a flag, file or field) otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"{source}: unknown family {name!r} (expected one of {sorted(FAMILIES)})")
    return FAMILIES[name]


def family_of(config: Any) -> ModelFamily:
    """The family of a model config (T5Config or DecoderConfig); TypeError for anything else."""
    for family in FAMILIES.values():
        if isinstance(config, family.config_cls):
            return family
    raise TypeError(f"model config: expected one of {[f.config_cls.__name__ for f in FAMILIES.values()]}, "
                    f"got {type(config).__name__}")


def model_for(config: Any) -> BaseModel:
    """The BaseModel wrapper of a model config."""
    return family_of(config).model_cls(config)


def config_from_dict(family: str, values: Mapping[str, Any], *, source: str = "model config") -> Any:
    """A config of `family` from its to_dict() fields (unknown fields are an error naming them)."""
    return get_family(family, source=source).config_cls.from_dict(dict(values))


def config_record(config: Any) -> dict[str, Any]:
    """The JSON record of a config that native checkpoints and model_config files hold:
    {"family": ..., "config": ...}."""
    return {"family": family_of(config).name, "config": config.to_dict()}


def config_from_record(record: Any, *, source: str) -> Any:
    """Inverse of config_record; ValueError naming `source` when a field is missing or unknown."""
    if not isinstance(record, dict) or "family" not in record or "config" not in record:
        raise ValueError(f"{source}: a model config record needs 'family' and 'config' fields")
    return config_from_dict(record["family"], record["config"], source=source)


def hf_family(hf_dir: str) -> ModelFamily:
    """The family that reads the HF checkpoint in `hf_dir`, from its config.json's model_type."""
    model_type = read_hf_config(hf_dir).get("model_type")
    for family in FAMILIES.values():
        if model_type in family.hf_model_types:
            return family
    supported = sorted(t for f in FAMILIES.values() for t in f.hf_model_types)
    raise ValueError(f"{hf_dir}/config.json: model_type {model_type!r} not supported (supported: "
                     f"{', '.join(supported)})")


def import_hf_checkpoint(hf_dir: str) -> tuple[Any, Any]:
    """(config, params) from an HF checkpoint directory, dispatched on its model_type."""
    return hf_family(hf_dir).import_hf(hf_dir)


def export_hf_checkpoint(config: Any, params: Any, out_dir: str) -> None:
    """Write (config, params) as an HF checkpoint, dispatched on the config's family."""
    family_of(config).export_hf(config, params, out_dir)


def init_shapes(family: str, batch_size: int, length: int) -> dict[str, tuple[int, int]]:
    """Shapes of the token features `get_initial_variables` needs (parameters do not depend on them)."""
    return {name: (batch_size, length) for name in get_family(family).init_features}

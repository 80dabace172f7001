"""Device meshes, logical axis rules and global input batches: how arrays are laid out over devices.

The mesh has three axes, ("data", "fsdp", "tensor"): "data" replicates parameters and splits the batch,
"fsdp" splits both the batch and the parameters (ZeRO-3 style: each device stores a slice and the
compiler all-gathers it for use), "tensor" splits heads / MLP / vocab dims (Megatron style). Each axis
has an ICI size (devices inside a slice) and a DCN size (across slices); -1 means "whatever is left".

Model layers name their dims logically (base.py lists the names); a rules table maps each logical
name to a mesh axis (or a tuple of them, or None = replicated). One table serves every model size.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, "str | tuple[str, ...] | None"], ...]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    ("layers", None),
    ("relpos_buckets", None),
)


@dataclass(frozen=True)
class MeshConfig:
    """Parallelism sizes per mesh axis: inside a slice (ici_*) and across slices (dcn_*); -1 = the rest."""

    ici_data: int = -1
    ici_fsdp: int = 1
    ici_tensor: int = 1
    dcn_data: int = 1
    dcn_fsdp: int = 1
    dcn_tensor: int = 1

    @property
    def ici(self) -> tuple[int, int, int]:
        return (self.ici_data, self.ici_fsdp, self.ici_tensor)

    @property
    def dcn(self) -> tuple[int, int, int]:
        return (self.dcn_data, self.dcn_fsdp, self.dcn_tensor)


def _fill_sizes(sizes: Sequence[int], total: int, level: str, unit: str) -> tuple[int, ...]:
    """Replace one -1 in `sizes` so that their product is `total` (of `unit`); ValueError naming the
    sizes and the total otherwise."""
    named = ", ".join(f"{level}_{axis}={size}" for axis, size in zip(MESH_AXES, sizes))
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one -1 per level, got {named}")
    bad = [s for s in sizes if s != -1 and s < 1]
    if bad:
        raise ValueError(f"mesh: sizes must be positive or -1, got {named}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if total % known:
            raise ValueError(f"mesh: {named} cannot fill {total} {unit} ({total} is not divisible by {known})")
        return tuple(total // known if s == -1 else s for s in sizes)
    if known != total:
        raise ValueError(f"mesh: {named} multiply to {known} but there are {total} {unit}")
    return tuple(sizes)


def mesh_shape(config: MeshConfig, num_devices: int, num_slices: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ici_shape, dcn_shape) resolved for `num_devices` devices in `num_slices` slices; raises ValueError
    on a mismatch before any device is touched."""
    if num_devices % num_slices:
        raise ValueError(f"mesh: {num_devices} devices do not split evenly into {num_slices} slices")
    dcn = _fill_sizes(list(config.dcn), num_slices, "dcn", "slices")
    ici = _fill_sizes(list(config.ici), num_devices // num_slices, "ici",
                      "devices" if num_slices == 1 else "devices per slice")
    return ici, dcn


def create_mesh(config: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
    """A Mesh with axes ("data", "fsdp", "tensor"); multi-slice when the devices carry `slice_index`."""
    devices = list(jax.devices() if devices is None else devices)
    slices = {getattr(d, "slice_index", 0) for d in devices}
    num_slices = len(slices) if all(hasattr(d, "slice_index") for d in devices) else 1
    ici, dcn = mesh_shape(config, len(devices), num_slices)
    if num_slices > 1:
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices)
    else:
        grid = mesh_utils.create_device_mesh(ici, devices=devices)
    return Mesh(grid, MESH_AXES)


def _rule_axes(target: str | tuple[str, ...] | None) -> tuple[str, ...]:
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def validate_rules(rules: Rules, mesh: Mesh) -> None:
    """Raise ValueError naming each rule that points at a mesh axis the mesh lacks, or is malformed."""
    problems = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
            problems.append(f"rule {i} {rule!r} is not (logical_name, mesh_axes)")
            continue
        missing = [axis for axis in _rule_axes(rule[1]) if axis not in mesh.axis_names]
        if missing:
            problems.append(f"rule {rule[0]!r} -> {rule[1]!r} names mesh axes {missing} not in mesh "
                            f"{tuple(mesh.axis_names)}")
    if problems:
        raise ValueError("logical axis rules: " + "; ".join(problems))


def _logical_names(tree: Any) -> Iterator[tuple[str, tuple[str | None, ...]]]:
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for path, leaf in leaves:
        if isinstance(leaf, nn.Partitioned):
            yield jax.tree_util.keystr(path), tuple(leaf.names)


def check_params_covered(abstract_vars: Any, rules: Rules) -> None:
    """Raise ValueError naming every parameter whose logical axis name has no rule (a typo in a layer or
    a rules table missing a name would otherwise silently replicate that dim)."""
    known = {name for name, _ in rules}
    unknown = {}
    for path, names in _logical_names(abstract_vars):
        for name in names:
            if name is not None and name not in known:
                unknown.setdefault(name, path)
    if unknown:
        listed = ", ".join(f"{name!r} (e.g. {path})" for name, path in sorted(unknown.items()))
        raise ValueError(f"logical axis rules: no rule for logical names {listed}; rules cover {sorted(known)}")


def logical_specs(boxed_tree: Any, rules: Rules) -> Any:
    """PartitionSpec tree (mesh axes) for a tree of boxed (nn.Partitioned) variables."""
    logical = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh(logical, rules)


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedSharding tree for a tree of boxed (nn.Partitioned) variables; unboxed leaves are replicated."""
    validate_rules(rules, mesh)
    logical = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(logical, mesh, rules)


@contextlib.contextmanager
def with_rules(rules: Rules) -> Iterator[None]:
    """Context in which `nn.with_logical_constraint` inside layers uses `rules` (activation sharding)."""
    with nn.logical_axis_rules(rules):
        yield


def batch_sharding(mesh: Mesh, *, batch_axes: Sequence[str] = ("data", "fsdp")) -> NamedSharding:
    """Sharding of an input array: leading (batch) dim split over `batch_axes`, the rest replicated."""
    missing = [a for a in batch_axes if a not in mesh.axis_names]
    if missing:
        raise ValueError(f"batch_axes {tuple(batch_axes)}: {missing} not in mesh {tuple(mesh.axis_names)}")
    return NamedSharding(mesh, PartitionSpec(tuple(batch_axes)))


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh, *,
                      batch_axes: Sequence[str] = ("data", "fsdp")) -> dict[str, jax.Array]:
    """Global jax arrays from this host's rows: the global batch is process_count x the local batch.

    Every host passes its own slice (same shapes on all hosts); the leading dim is split over `batch_axes`.
    """
    sharding = batch_sharding(mesh, batch_axes=batch_axes)
    split = math.prod(mesh.shape[a] for a in batch_axes)
    out = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ValueError(f"batch feature {name!r}: needs a leading batch dim, got a scalar")
        global_rows = value.shape[0] * jax.process_count()
        if global_rows % split:
            raise ValueError(f"batch feature {name!r}: global batch {global_rows} (local {value.shape[0]} x "
                             f"{jax.process_count()} hosts) is not divisible by the {split} devices of "
                             f"mesh axes {tuple(batch_axes)}")
        global_shape = (global_rows,) + value.shape[1:]
        out[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


def host_shard_info() -> tuple[int, int]:
    """(process_index, process_count): which slice of the data this host should read."""
    return jax.process_index(), jax.process_count()

"""The sharded train state: abstract shapes and shardings, direct sharded init, FSDP memory check.

Parameter shardings come from the layers' logical axis names through the rules table. Optimizer state
shardings are derived from the parameters' (see `optimizer_state_shardings`), so FSDP splits Adam /
Adafactor statistics like the weights they belong to. Initialisation runs under `jax.jit` with those
shardings as outputs: each device only ever allocates its own shard, so a model larger than one
device's (or one host's) memory can be initialised on a pod.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from symbol_tuning.models.base import BaseModel
from symbol_tuning.training.partitioning import Rules, check_params_covered, logical_shardings, validate_rules

# Optimizer-state leaves that mirror no parameter and are smaller than this many elements are replicated.
SMALL_LEAF_ELEMENTS = 1 << 20


@flax.struct.dataclass
class TrainState:
    """step (int32 scalar), params (unboxed tree), opt_state (optax state), rng (raw uint32 key data)."""

    step: Any
    params: Any
    opt_state: Any
    rng: Any


def replicated(mesh: Mesh) -> NamedSharding:
    """The fully replicated sharding on `mesh` (scalars, small statistics, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def _full_spec(sharding: NamedSharding, ndim: int) -> tuple:
    spec = tuple(sharding.spec)
    return spec + (None,) * (ndim - len(spec))


def _shape_sharding(shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
    """Sharding for a leaf that mirrors no parameter: replicated when small, else its largest dim that
    divides evenly over "fsdp" is split over "fsdp"."""
    fsdp = mesh.shape.get("fsdp", 1)
    if math.prod(shape) < SMALL_LEAF_ELEMENTS or fsdp == 1:
        return replicated(mesh)
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return NamedSharding(mesh, PartitionSpec(*spec))
    return replicated(mesh)


def _leaf_sharding(leaf: Any, param: Any, param_sharding: NamedSharding, mesh: Mesh) -> NamedSharding:
    """Sharding of an optimizer-state leaf that sits where `param` sits in a parameter-shaped subtree."""
    shape, pshape = tuple(leaf.shape), tuple(param.shape)
    if shape == pshape:
        return param_sharding
    if len(shape) == len(pshape) - 1:  # a factored statistic: the parameter with one dim reduced away
        spec = _full_spec(param_sharding, len(pshape))
        for dropped in reversed(range(len(pshape))):
            if pshape[:dropped] + pshape[dropped + 1:] == shape:
                return NamedSharding(mesh, PartitionSpec(*(spec[:dropped] + spec[dropped + 1:])))
    return _shape_sharding(shape, mesh)


def optimizer_state_shardings(abstract_opt_state: Any, abstract_params: Any, param_shardings: Any,
                              mesh: Mesh) -> Any:
    """Shardings for an optax state, derived from the parameters' shardings.

    Every subtree with the parameter tree's structure (Adam's mu / nu, Adafactor's v, v_row, v_col,
    momentum) is matched leaf by leaf with its parameter: a leaf of the same shape takes the
    parameter's sharding; a factored Adafactor statistic (the parameter's shape with one dim reduced
    away) takes the parameter's spec without that dim. Everything else -- step counts, Adafactor's
    (1,)-shaped placeholders for unfactored dims, scalars, statistics of a kernel factored in a merged
    view (`optimizers.factoring_view`) -- is replicated when small (see `_shape_sharding`).
    """
    param_def = jax.tree_util.tree_structure(abstract_params)
    params = jax.tree_util.tree_leaves(abstract_params)
    shardings = jax.tree_util.tree_leaves(param_shardings)

    def mirrors_params(node: Any) -> bool:
        try:
            return node is not None and jax.tree_util.tree_structure(node) == param_def
        except Exception:  # noqa: BLE001 -- non-pytree nodes simply do not mirror the params
            return False

    def assign(node: Any) -> Any:
        if mirrors_params(node):
            leaves = jax.tree_util.tree_leaves(node)
            return jax.tree_util.tree_unflatten(
                param_def, [_leaf_sharding(x, p, s, mesh) for x, p, s in zip(leaves, params, shardings)])
        return _shape_sharding(tuple(node.shape), mesh)

    return jax.tree_util.tree_map(assign, abstract_opt_state, is_leaf=mirrors_params)


def _raw_key(rng: jax.Array) -> jax.Array:
    """uint32 key data from a typed or raw PRNG key (raw keys checkpoint with Orbax like any array)."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng)
    return rng


def abstract_train_state(*, model: BaseModel, optimizer: optax.GradientTransformation,
                         input_shapes: Mapping[str, tuple[int, ...]], mesh: Mesh, rules: Rules) -> TrainState:
    """A TrainState of jax.ShapeDtypeStruct carrying `.sharding`: shapes and layout without allocating
    (for memory planning and for Orbax restore onto `mesh`)."""
    validate_rules(rules, mesh)
    init_vars = functools.partial(model.get_initial_variables, input_shapes=dict(input_shapes))
    boxed = jax.eval_shape(init_vars, jax.random.PRNGKey(0))
    if "params" not in boxed:
        raise ValueError(f"{type(model).__name__}.get_initial_variables returned no 'params' (got {list(boxed)})")
    check_params_covered(boxed["params"], rules)
    param_shardings = logical_shardings(boxed["params"], mesh, rules)
    abstract_params = nn.meta.unbox(boxed["params"])
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    opt_shardings = optimizer_state_shardings(abstract_opt, abstract_params, param_shardings, mesh)
    rep = replicated(mesh)

    def with_sharding(x, s):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    return TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
        params=jax.tree_util.tree_map(with_sharding, abstract_params, param_shardings),
        opt_state=jax.tree_util.tree_map(with_sharding, abstract_opt, opt_shardings),
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep))


def state_shardings(abstract_state: TrainState) -> TrainState:
    """The NamedSharding tree of an abstract (or concrete) train state."""
    return jax.tree_util.tree_map(lambda x: x.sharding, abstract_state)


def _check_init_params(init_params: Any, abstract_params: Any) -> None:
    """ValueError naming the first parameter whose path or shape differs from the model's."""
    want = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(abstract_params)}
    got = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(init_params)}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise ValueError(f"init_params: missing parameters {missing[:5]}, unexpected parameters {extra[:5]}")
    for path, x in want.items():
        if tuple(np.shape(got[path])) != tuple(x.shape):
            raise ValueError(f"init_params{path}: shape {tuple(np.shape(got[path]))}, model expects {tuple(x.shape)}")


def create_train_state(*, model: BaseModel, optimizer: optax.GradientTransformation, rng: jax.Array,
                       input_shapes: Mapping[str, tuple[int, ...]], mesh: Mesh, rules: Rules,
                       init_params: Any = None) -> tuple[TrainState, TrainState]:
    """(state, shardings): a train state created directly in its shardings.

    Without `init_params`, parameters and optimizer state are initialised inside one jit whose outputs
    are sharded, so no device or host ever holds the full model. With `init_params` (an unboxed tree from
    an HF import or a native checkpoint) they are placed into the parameter shardings with
    `jax.device_put` and only the optimizer state is initialised. `rng` seeds the parameters and, split
    off, the state's rng (dropout).
    """
    abstract = abstract_train_state(model=model, optimizer=optimizer, input_shapes=input_shapes, mesh=mesh,
                                    rules=rules)
    shardings = state_shardings(abstract)
    init_rng, state_rng = jax.random.split(_raw_key(rng))
    shapes = dict(input_shapes)

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        if init_params is None:
            def init_fn(key, state_key):
                params = nn.meta.unbox(model.get_initial_variables(key, shapes)["params"])
                return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                                  rng=state_key)
            state = jax.jit(init_fn, out_shardings=shardings)(init_rng, state_rng)
        else:
            init_params = nn.meta.unbox(init_params)
            _check_init_params(init_params, abstract.params)
            params = jax.device_put(init_params, shardings.params)
            params = jax.tree_util.tree_map(lambda p, a: p.astype(a.dtype), params, abstract.params)
            opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
            state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step), params=params,
                               opt_state=opt_state, rng=jax.device_put(state_rng, shardings.rng))
    return state, shardings


def param_bytes_per_device(state: Any) -> dict[str, dict[Any, int]]:
    """Bytes each device stores, read from the arrays' addressable shards: {"params": {device: bytes},
    "opt_state": {...}, "total": {...}} (this host's devices only)."""
    out: dict[str, dict[Any, int]] = {"params": {}, "opt_state": {}, "total": {}}
    parts = {"params": state.params, "opt_state": state.opt_state}
    for part, tree in parts.items():
        for leaf in jax.tree_util.tree_leaves(tree):
            if not isinstance(leaf, jax.Array):
                continue
            for shard in leaf.addressable_shards:
                nbytes = math.prod(shard.data.shape) * leaf.dtype.itemsize
                out[part][shard.device] = out[part].get(shard.device, 0) + nbytes
                out["total"][shard.device] = out["total"].get(shard.device, 0) + nbytes
    return out

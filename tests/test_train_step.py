"""The partitioned train step on 8 simulated CPU devices, for both model families.

References: the same training on one device (no partitioning at all), numpy cross-entropy of the
model's own logits for the first loss, and the arrays' shard shapes for FSDP memory.
"""
import re

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from symbol_tuning.models import decoder, decoder_model, t5, t5_model
from symbol_tuning.training import optimizers
from symbol_tuning.training import partitioning as pt
from symbol_tuning.training import train_state as ts
from symbol_tuning.training.train_step import StepOptions, make_eval_step, make_train_step

VOCAB = 256
STEPS = 20


def make_model(family):
    if family == "decoder_only":
        return decoder_model.model_from_config(decoder.DecoderConfig.preset("tiny", dtype="float32"))
    return t5_model.model_from_config(t5.T5Config.preset("tiny", dtype="float32", vocab_size=VOCAB))


def make_optimizer(family):
    if family == "decoder_only":
        return optimizers.make_optimizer(name="adamw", learning_rate=1e-3, weight_decay=0.01, max_grad_norm=1.0)
    # small factoring threshold so the tiny model's kernels get factored second moments
    return optimizers.make_optimizer(name="adafactor", learning_rate=1e-2, min_dim_size_to_factor=32)


def make_batches(family, count, batch_size=8, length=8, seed=0):
    rng = np.random.RandomState(seed)
    batches = []
    for _ in range(count):
        batch = {"decoder_input_tokens": rng.randint(1, VOCAB, (batch_size, length)).astype(np.int32),
                 "decoder_target_tokens": rng.randint(1, VOCAB, (batch_size, length)).astype(np.int32),
                 "decoder_loss_weights": (rng.rand(batch_size, length) > 0.3).astype(np.float32)}
        if family == "encoder_decoder":
            batch["encoder_input_tokens"] = rng.randint(1, VOCAB, (batch_size, length)).astype(np.int32)
        else:
            batch["decoder_causal_attention"] = np.zeros((batch_size, length), np.int32)
        batches.append(batch)
    return batches


def mesh_for(shape):
    if shape is None:
        return pt.create_mesh(pt.MeshConfig(ici_data=1), devices=jax.devices()[:1])
    return pt.create_mesh(pt.MeshConfig(*shape))


def np_loss(logits, batch):
    """Sum of weighted token cross-entropies / number of real target tokens, in float64 numpy."""
    logits = np.asarray(logits, np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    target_logit = np.take_along_axis(logits, batch["decoder_target_tokens"][..., None], -1)[..., 0]
    weights = batch["decoder_loss_weights"]
    return float(((log_z - target_logit) * weights).sum() / weights.sum())


def train(family, mesh_shape, *, steps, batches, num_microbatches=1, z_loss=0.0, check_first_loss=False,
          init_params=None):
    """(metrics per step, initial params, final params) of `steps` steps on a mesh (None = one device)."""
    model, optimizer, mesh = make_model(family), make_optimizer(family), mesh_for(mesh_shape)
    shapes = {name: value.shape for name, value in batches[0].items()}
    state, shardings = ts.create_train_state(model=model, optimizer=optimizer, rng=jax.random.PRNGKey(0),
                                             input_shapes=shapes, mesh=mesh, rules=pt.DEFAULT_RULES,
                                             init_params=init_params)
    initial = jax.tree_util.tree_map(np.asarray, state.params)
    if check_first_loss:
        logits = jax.jit(model.compute_logits)(state.params, batches[0])
        first_loss = np_loss(logits, batches[0])
    options = StepOptions(num_microbatches=num_microbatches, z_loss=z_loss,
                          loss_normalizing_factor="num_real_target_tokens", dropout=False)
    step_fn = make_train_step(model=model, optimizer=optimizer, state_shardings=shardings, batch_shardings=None,
                              mesh=mesh, rules=pt.DEFAULT_RULES, options=options, learning_rate_fn=1e-3)
    history = []
    for i in range(steps):
        state, metrics = step_fn(state, pt.make_global_batch(batches[i % len(batches)], mesh))
        history.append({k: float(v) for k, v in metrics.items()})
    if check_first_loss:
        np.testing.assert_allclose(history[0]["loss"], first_loss, rtol=1e-5)
    assert int(state.step) == steps
    return history, initial, jax.tree_util.tree_map(np.asarray, state.params)


@pytest.mark.parametrize("family", ["decoder_only", "encoder_decoder"])
def test_same_losses_on_every_mesh_as_on_one_device(family):
    """Initialised once on one device; the sharded runs start from those values via `init_params`
    (direct sharded initialisation is checked against a plain jit in the FSDP test)."""
    batches = make_batches(family, 4)
    reference, initial, _ = train(family, None, steps=STEPS, batches=batches, check_first_loss=True)
    ref_losses = np.array([m["loss"] for m in reference])
    assert ref_losses[-1] < ref_losses[:4].mean()  # training makes progress, so the comparison means something
    for shape in [(8, 1, 1), (2, 2, 2), (1, 4, 2)]:
        history, _, _ = train(family, shape, steps=STEPS, batches=batches, init_params=initial)
        np.testing.assert_allclose([m["loss"] for m in history], ref_losses, rtol=1e-5, err_msg=f"mesh {shape}")
        np.testing.assert_allclose([m["grad_norm"] for m in history], [m["grad_norm"] for m in reference],
                                   rtol=1e-4, err_msg=f"mesh {shape}")


def test_two_microbatches_equal_one_batch():
    batches = make_batches("decoder_only", 2, batch_size=16, seed=1)
    one, initial, params_one = train("decoder_only", (2, 2, 2), steps=3, batches=batches, z_loss=1e-4)
    two, _, params_two = train("decoder_only", (2, 2, 2), steps=3, batches=batches, z_loss=1e-4, num_microbatches=2,
                               init_params=initial)
    for key in ("loss", "z_loss", "accuracy", "num_target_tokens", "grad_norm"):
        np.testing.assert_allclose([m[key] for m in two], [m[key] for m in one], rtol=1e-5, err_msg=key)
    assert one[0]["z_loss"] > 0 and one[0]["learning_rate"] == pytest.approx(1e-3)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), params_two, params_one)


def tree_bytes(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def test_fsdp_over_eight_devices_stores_an_eighth_of_params_and_optimizer_state():
    family = "decoder_only"
    mesh = mesh_for((1, 8, 1))
    model, optimizer = make_model(family), make_optimizer(family)
    shapes = {name: value.shape for name, value in make_batches(family, 1)[0].items()}
    abstract = ts.abstract_train_state(model=model, optimizer=optimizer, input_shapes=shapes, mesh=mesh,
                                       rules=pt.DEFAULT_RULES)
    state, shardings = ts.create_train_state(model=model, optimizer=optimizer, rng=jax.random.PRNGKey(0),
                                             input_shapes=shapes, mesh=mesh, rules=pt.DEFAULT_RULES)
    same = jax.tree_util.tree_map(lambda a, x: a.shape == x.shape and a.sharding == x.sharding, abstract, state)
    assert all(jax.tree_util.tree_leaves(same))
    per_device = ts.param_bytes_per_device(state)
    for part in ("params", "opt_state"):
        total = tree_bytes(getattr(state, part))
        assert len(per_device[part]) == 8
        for device, nbytes in per_device[part].items():
            assert abs(nbytes - total / 8) <= 0.1 * total / 8, (part, device, nbytes, total)
    # sharded initialisation gives the values of a plain single-device jit of the model's init
    init_key = jax.random.split(jax.random.PRNGKey(0))[0]
    plain = jax.jit(lambda key: nn.meta.unbox(model.get_initial_variables(key, shapes)["params"]))(init_key)
    jax.tree_util.tree_map(lambda got, want: np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6),
                           state.params, plain)
    embedding = state.params["token_embed"]["embedding"]
    assert embedding.sharding.spec == P("tensor", "fsdp")  # vocab over a tensor axis of size 1
    assert {s.data.shape for s in embedding.addressable_shards} == {(VOCAB, 64 // 8)}


def test_adafactor_factored_statistics_follow_their_parameter_sharding():
    mesh = mesh_for((1, 4, 2))
    model, optimizer = make_model("encoder_decoder"), make_optimizer("encoder_decoder")
    shapes = {name: value.shape for name, value in make_batches("encoder_decoder", 1)[0].items()}
    abstract = ts.abstract_train_state(model=model, optimizer=optimizer, input_shapes=shapes, mesh=mesh,
                                       rules=pt.DEFAULT_RULES)
    factored = [s for s in jax.tree_util.tree_leaves(abstract.opt_state, is_leaf=lambda x: hasattr(x, "v_row"))
                if hasattr(s, "v_row")]
    assert factored, "no Adafactor state found"
    checked = viewed = 0
    params = jax.tree_util.tree_leaves(abstract.params)
    for v_row, v_col, v, param in zip(jax.tree_util.tree_leaves(factored[0].v_row),
                                      jax.tree_util.tree_leaves(factored[0].v_col),
                                      jax.tree_util.tree_leaves(factored[0].v), params):
        spec = tuple(param.sharding.spec) + (None,) * (param.ndim - len(param.sharding.spec))
        view = optimizers.factoring_view(param.shape, 32)
        if v.shape == (1,) and view is not None:  # factored in a merged view (attention kernels [.., heads, kv])
            for stat in (v_row, v_col):
                assert any(view[:d] + view[d + 1:] == stat.shape for d in range(len(view)))
                assert stat.sharding.spec == P()  # small: replicated
            viewed += 1
        elif v.shape == (1,):  # factored: v is a placeholder, each statistic is the param with one dim reduced
            for stat in (v_row, v_col):
                dropped = [d for d in range(param.ndim) if param.shape[:d] + param.shape[d + 1:] == stat.shape]
                assert any(tuple(stat.sharding.spec) + (None,) * (stat.ndim - len(stat.sharding.spec))
                           == spec[:d] + spec[d + 1:] for d in dropped)
            checked += 1
        else:
            assert v.sharding == param.sharding and v_row.sharding.spec == P()
    assert checked >= 4 and viewed >= 4


def test_init_params_are_placed_into_shardings_and_eval_step_matches_numpy():
    family = "encoder_decoder"
    mesh = mesh_for((1, 4, 2))
    model, optimizer = make_model(family), make_optimizer(family)
    batch = make_batches(family, 1)[0]
    shapes = {name: value.shape for name, value in batch.items()}
    boxed = jax.jit(lambda key: model.get_initial_variables(key, shapes))(jax.random.PRNGKey(7))["params"]
    host_params = jax.tree_util.tree_map(np.asarray, nn.meta.unbox(boxed))
    state, shardings = ts.create_train_state(model=model, optimizer=optimizer, rng=jax.random.PRNGKey(0),
                                             input_shapes=shapes, mesh=mesh, rules=pt.DEFAULT_RULES,
                                             init_params=host_params)
    jax.tree_util.tree_map(lambda got, want: np.testing.assert_array_equal(np.asarray(got), want),
                           state.params, host_params)
    jax.tree_util.tree_map(lambda got, want: assert_same_sharding(got, want), state.params, shardings.params)
    eval_step = make_eval_step(model=model, state_shardings=shardings, batch_shardings=None, mesh=mesh,
                               rules=pt.DEFAULT_RULES,
                               options=StepOptions(loss_normalizing_factor="num_real_target_tokens"))
    metrics = eval_step(state, pt.make_global_batch(batch, mesh))
    logits = jax.jit(model.compute_logits)(host_params, batch)
    np.testing.assert_allclose(float(metrics["loss"]), np_loss(logits, batch), rtol=1e-5)
    assert float(metrics["num_target_tokens"]) == batch["decoder_loss_weights"].sum()

    first = jax.tree_util.keystr(jax.tree_util.tree_leaves_with_path(host_params)[0][0])
    bad = jax.tree_util.tree_map_with_path(
        lambda p, x: x[:1] if jax.tree_util.keystr(p) == first else x, host_params)
    with pytest.raises(ValueError, match=r"init_params" + re.escape(first) + ": shape"):
        ts.create_train_state(model=model, optimizer=optimizer, rng=jax.random.PRNGKey(0), input_shapes=shapes,
                              mesh=mesh, rules=pt.DEFAULT_RULES, init_params=bad)
    with pytest.raises(ValueError, match="unexpected parameters"):
        ts.create_train_state(model=model, optimizer=optimizer, rng=jax.random.PRNGKey(0), input_shapes=shapes,
                              mesh=mesh, rules=pt.DEFAULT_RULES, init_params={**host_params, "extra": np.zeros(3)})


def assert_same_sharding(array, sharding):
    assert array.sharding.is_equivalent_to(sharding, array.ndim), (array.sharding, sharding)


def test_rule_naming_unknown_mesh_axis_fails_before_any_allocation():
    family = "decoder_only"
    model, optimizer = make_model(family), make_optimizer(family)
    shapes = {name: value.shape for name, value in make_batches(family, 1)[0].items()}
    rules = tuple((name, "expert" if name == "embed" else axes) for name, axes in pt.DEFAULT_RULES)
    with pytest.raises(ValueError, match="'expert'"):
        ts.create_train_state(model=model, optimizer=optimizer, rng=jax.random.PRNGKey(0), input_shapes=shapes,
                              mesh=mesh_for((8, 1, 1)), rules=rules)
    with pytest.raises(ValueError, match="no rule for logical names 'embed'"):
        ts.abstract_train_state(model=model, optimizer=optimizer, input_shapes=shapes, mesh=mesh_for((8, 1, 1)),
                                rules=tuple(rule for rule in pt.DEFAULT_RULES if rule[0] != "embed"))


def test_microbatches_that_do_not_split_over_the_batch_devices_are_rejected_at_trace_time():
    family = "decoder_only"
    mesh, model, optimizer = mesh_for((2, 2, 2)), make_model(family), make_optimizer(family)
    batch = make_batches(family, 1, batch_size=4)[0]
    shapes = {name: value.shape for name, value in batch.items()}
    abstract = ts.abstract_train_state(model=model, optimizer=optimizer, input_shapes=shapes, mesh=mesh,
                                       rules=pt.DEFAULT_RULES)
    step_fn = make_train_step(model=model, optimizer=optimizer, state_shardings=ts.state_shardings(abstract),
                              batch_shardings=None, mesh=mesh, rules=pt.DEFAULT_RULES,
                              options=StepOptions(num_microbatches=2))
    batch_structs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    with pytest.raises(ValueError, match=r"batch size 4 is not divisible by num_microbatches=2 x 4 devices"):
        with jax.set_mesh(mesh), nn.logical_axis_rules(pt.DEFAULT_RULES):
            step_fn.jitted.lower(abstract, batch_structs)

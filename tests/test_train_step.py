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


EPS32 = 2.0 ** -23  # float32 machine epsilon


def reorder_rtol(batch, *contractions):
    """How far a float32 loss or gradient may move when another compiled program (another mesh, microbatching)
    sums in another order: reordering a sum of n terms moves it by at most ~n * eps times the sum of the terms'
    magnitudes, and the first-order errors of a chain of sums add. The sums: over the batch's target positions,
    then over the model dims (`contractions`, their lengths) that the other program splits differently."""
    return (batch["decoder_target_tokens"].size + sum(contractions)) * EPS32


def assert_close_to_leaf_scale(got, want, rtol, what):
    """Each leaf within rtol of the largest magnitude in `want`'s leaf: that is the scale of the terms summed into
    its elements. An element's own value is no scale: it can cancel much larger terms, and float32 noise in such a
    near-zero element is what Adam / Adafactor blow up (they divide by a running RMS)."""
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
        w = np.asarray(w)
        np.testing.assert_allclose(g, w, rtol=0, atol=rtol * float(np.max(np.abs(w), initial=0)),
                                   err_msg=f"{what} {jax.tree_util.keystr(path)}")


class Recording:
    """An optimizer, `inner` or none (zero updates: the parameters stay put), whose state also keeps the step's
    gradients and updates: (inner state, grads, updates). Both mirror the parameters, so they are sharded alike."""

    def __init__(self, inner=None):
        self.inner = inner

    def init(self, params):
        zeros = jax.tree_util.tree_map(jax.numpy.zeros_like, params)
        return (() if self.inner is None else self.inner.init(params)), zeros, zeros

    def update(self, grads, state, params=None):
        if self.inner is None:
            updates, inner_state = jax.tree_util.tree_map(jax.numpy.zeros_like, grads), ()
        else:
            updates, inner_state = self.inner.update(grads, state[0], params)
        return updates, (inner_state, grads, updates)


def stepper(family, mesh_shape, batch, optimizer, *, num_microbatches=1, z_loss=0.0):
    """(initial state on the host, step) on a mesh (None = one device): `step(host_state, batch)` places the
    state into the mesh's shardings, runs one train step and returns (new host state, metrics)."""
    model, mesh = make_model(family), mesh_for(mesh_shape)
    shapes = {name: value.shape for name, value in batch.items()}
    state, shardings = ts.create_train_state(model=model, optimizer=optimizer, rng=jax.random.PRNGKey(0),
                                             input_shapes=shapes, mesh=mesh, rules=pt.DEFAULT_RULES)
    options = StepOptions(num_microbatches=num_microbatches, z_loss=z_loss,
                          loss_normalizing_factor="num_real_target_tokens", dropout=False)
    step_fn = make_train_step(model=model, optimizer=optimizer, state_shardings=shardings, batch_shardings=None,
                              mesh=mesh, rules=pt.DEFAULT_RULES, options=options, learning_rate_fn=1e-3)

    def step(host_state, batch):
        new, metrics = step_fn(jax.device_put(host_state, shardings), pt.make_global_batch(batch, mesh))
        return jax.device_get(new), {k: float(v) for k, v in metrics.items()}

    return jax.device_get(state), step


@pytest.mark.parametrize("family", ["decoder_only", "encoder_decoder"])
def test_same_losses_on_every_mesh_as_on_one_device(family):
    """Every step of a one-device run, replayed on each mesh from that step's state, gives the same loss,
    gradients and optimizer update up to float32 reordering. Replayed rather than run on its own: free runs
    drift apart, as the optimizer turns rounding noise in near-zero gradient elements into updates of up to
    the learning rate (see assert_close_to_leaf_scale), and later steps compound it."""
    batches = make_batches(family, 4)
    optimizer = Recording(make_optimizer(family))
    state, step = stepper(family, None, batches[0], optimizer)
    model = make_model(family)
    first_logits = jax.jit(model.compute_logits)(state.params, batches[0])
    states, reference = [state], []
    for i in range(STEPS):
        state, metrics = step(state, batches[i % len(batches)])
        states.append(state)
        reference.append(metrics)
    assert int(state.step) == STEPS
    # one float32 cross-entropy of the same logits vs float64: ~1 eps seen, 1e-5 is 84 eps
    np.testing.assert_allclose(reference[0]["loss"], np_loss(first_logits, batches[0]), rtol=1e-5)
    ref_losses = np.array([m["loss"] for m in reference])
    assert ref_losses[-1] < ref_losses[:4].mean()  # training makes progress, so the replayed states differ

    # the mesh splits the tokens (data, fsdp) and the vocab, d_ff and heads x head_dim (= d_model) dims (tensor)
    cfg = model.config
    rtol = reorder_rtol(batches[0], cfg.vocab_size, cfg.d_ff, cfg.d_model)  # 6.6e-5 decoder, 6.1e-5 T5
    # Given the same gradients the update reorders only sums of squares (norms, RMS, second moments): nonnegative
    # terms, so at most n * eps relative, n the longest sum: AdamW's global norm over all parameters (1.5e-2),
    # Adafactor's RMS over a leaf (2e-3). Loose, but sharding errors are O(1) and test_losses checks the arithmetic.
    sizes = [x.size for x in jax.tree_util.tree_leaves(state.params)]
    update_rtol = (sum(sizes) if family == "decoder_only" else max(sizes)) * EPS32
    one_device_update = jax.jit(optimizer.inner.update)
    for shape in [(8, 1, 1), (2, 2, 2), (1, 4, 2)]:
        _, mesh_step = stepper(family, shape, batches[0], optimizer)
        for i in range(STEPS):
            got, metrics = mesh_step(states[i], batches[i % len(batches)])
            where = f"mesh {shape} step {i}"
            for key in ("loss", "grad_norm"):  # a sum of nonnegative terms, a norm: relative to the value
                np.testing.assert_allclose(metrics[key], reference[i][key], rtol=rtol, err_msg=f"{where} {key}")
            inner, grads, updates = got.opt_state
            assert_close_to_leaf_scale(grads, states[i + 1].opt_state[1], rtol, f"{where} gradients")
            want_updates, want_inner = one_device_update(grads, states[i].opt_state[0], states[i].params)
            assert_close_to_leaf_scale((inner, updates), (want_inner, want_updates), update_rtol, f"{where} update")


def test_two_microbatches_equal_one_batch():
    """The gradients accumulated over two microbatches are the single-batch gradients (and so are the metrics),
    read off the state of a recording optimizer that leaves the parameters as they are."""
    batches = make_batches("decoder_only", 2, batch_size=16, seed=1)
    state, one_step = stepper("decoder_only", (2, 2, 2), batches[0], Recording(), z_loss=1e-4)
    _, two_steps = stepper("decoder_only", (2, 2, 2), batches[0], Recording(), z_loss=1e-4, num_microbatches=2)
    # Microbatching splits the sum over the batch's 16 x 8 target positions into two sums and an add; each row
    # goes through the same contractions either way, so the bound counts the tokens: 128 * eps = 1.5e-5.
    rtol = reorder_rtol(batches[0])
    for i, batch in enumerate(batches):
        one, one_metrics = one_step(state, batch)
        two, two_metrics = two_steps(state, batch)
        assert_close_to_leaf_scale(two.opt_state[1], one.opt_state[1], rtol, f"batch {i} gradients")
        for key in ("loss", "z_loss", "grad_norm"):  # sums of nonnegative terms, a norm: relative to the value
            np.testing.assert_allclose(two_metrics[key], one_metrics[key], rtol=rtol, err_msg=f"batch {i} {key}")
        for key in ("accuracy", "num_target_tokens"):  # integer counts and their quotient: exact
            assert two_metrics[key] == one_metrics[key], (i, key)
        assert one_metrics["z_loss"] > 0 and one_metrics["learning_rate"] == pytest.approx(1e-3)
    jax.tree_util.tree_map(np.testing.assert_array_equal, two.params, state.params)  # zero updates: same point


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

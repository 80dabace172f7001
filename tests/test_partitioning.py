"""Meshes, logical axis rules, global batches and distributed start-up (8 simulated CPU devices)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from symbol_tuning.training import partitioning as pt


class Untouchable:
    """A stand-in single-slice device that fails on any use beyond asking for its slice: proves errors
    are raised before devices are touched."""

    def __getattr__(self, name):
        if name == "slice_index":
            raise AttributeError(name)
        raise AssertionError(f"device attribute {name!r} read before the mesh sizes were checked")


class SliceDevice:
    """A CPU device presented as part of TPU slice `slice_index` (multi-slice without TPUs)."""

    def __init__(self, device, slice_index):
        self._device, self.slice_index = device, slice_index

    def __getattr__(self, name):
        return getattr(self._device, name)


@pytest.mark.parametrize("config,shape", [
    (pt.MeshConfig(ici_data=8), (8, 1, 1)),
    (pt.MeshConfig(ici_data=2, ici_fsdp=2, ici_tensor=2), (2, 2, 2)),
    (pt.MeshConfig(ici_data=1, ici_fsdp=-1, ici_tensor=2), (1, 4, 2)),
    (pt.MeshConfig(ici_data=-1, ici_fsdp=1, ici_tensor=1), (8, 1, 1)),
])
def test_create_mesh_resolves_sizes_and_names_axes(config, shape):
    mesh = pt.create_mesh(config)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert tuple(mesh.shape.values()) == shape
    assert sorted(d.id for d in mesh.devices.ravel()) == list(range(8))


def test_create_mesh_on_one_device():
    mesh = pt.create_mesh(pt.MeshConfig(ici_data=-1), devices=jax.devices()[:1])
    assert tuple(mesh.shape.values()) == (1, 1, 1)


def test_multi_slice_devices_get_a_hybrid_mesh_with_slices_along_dcn_axis():
    devices = [SliceDevice(d, i // 4) for i, d in enumerate(jax.devices())]
    mesh = pt.create_mesh(pt.MeshConfig(ici_data=1, ici_fsdp=-1, dcn_data=2), devices=devices)
    assert tuple(mesh.shape.values()) == (2, 4, 1)
    assert [d.slice_index for d in mesh.devices[0].ravel()] == [0] * 4
    assert [d.slice_index for d in mesh.devices[1].ravel()] == [1] * 4


@pytest.mark.parametrize("config,message", [
    (pt.MeshConfig(ici_data=2, ici_fsdp=2, ici_tensor=1),
     r"ici_data=2, ici_fsdp=2, ici_tensor=1 multiply to 4 but there are 8 devices"),
    (pt.MeshConfig(ici_data=-1, ici_fsdp=-1), r"at most one -1 per level.*ici_data=-1, ici_fsdp=-1"),
    (pt.MeshConfig(ici_data=-1, ici_tensor=3), r"cannot fill 8 devices"),
    (pt.MeshConfig(ici_data=8, ici_fsdp=0), r"positive or -1"),
    (pt.MeshConfig(ici_data=4, dcn_data=2),
     r"dcn_data=2, dcn_fsdp=1, dcn_tensor=1 multiply to 2 but there are 1 slices"),
])
def test_mesh_size_errors_are_value_errors_before_devices_are_used(config, message):
    with pytest.raises(ValueError, match=message):
        pt.create_mesh(config, devices=[Untouchable() for _ in range(8)])


def test_default_rules_map_logical_names_onto_mesh_axes():
    mesh = pt.create_mesh(pt.MeshConfig(ici_data=2, ici_fsdp=2, ici_tensor=2))
    boxed = {
        "mlp_in": nn.Partitioned(jnp.zeros((2, 8, 16)), names=("layers", "embed", "mlp")),
        "attn": nn.Partitioned(jnp.zeros((8, 4, 2)), names=("embed", "heads", "kv")),
        "embedding": nn.Partitioned(jnp.zeros((32, 8)), names=("vocab", "embed")),
        "relpos": nn.Partitioned(jnp.zeros((32, 4)), names=("relpos_buckets", "heads")),
    }
    shardings = pt.logical_shardings(boxed, mesh, pt.DEFAULT_RULES)
    assert shardings["mlp_in"].spec == P(None, "fsdp", "tensor")
    assert shardings["attn"].spec == P("fsdp", "tensor", None)
    assert shardings["embedding"].spec == P("tensor", "fsdp")
    assert shardings["relpos"].spec == P(None, "tensor")
    assert all(s.mesh is mesh for s in shardings.values())
    assert dict(pt.DEFAULT_RULES)["batch"] == ("data", "fsdp")


def test_rule_naming_unknown_mesh_axis_is_a_value_error():
    mesh = pt.create_mesh(pt.MeshConfig(ici_data=8))
    rules = pt.DEFAULT_RULES + (("experts", "expert"),)
    with pytest.raises(ValueError, match=r"rule 'experts' -> 'expert' names mesh axes \['expert'\]"):
        pt.validate_rules(rules, mesh)
    boxed = {"w": nn.Partitioned(jnp.zeros((8, 8)), names=("embed", "mlp"))}
    with pytest.raises(ValueError, match="'experts'"):
        pt.logical_shardings(boxed, mesh, rules)
    with pytest.raises(ValueError, match="not \\(logical_name, mesh_axes\\)"):
        pt.validate_rules((("embed",),), mesh)


def test_params_with_logical_names_missing_from_rules_are_reported():
    boxed = {"block": {"w": nn.Partitioned(jnp.zeros((8, 8)), names=("embed", "expert_mlp"))}}
    with pytest.raises(ValueError, match=r"'expert_mlp' \(e.g. \['block'\]\['w'\]\)"):
        pt.check_params_covered(boxed, pt.DEFAULT_RULES)
    pt.check_params_covered({"w": nn.Partitioned(jnp.zeros((8, 8)), names=("embed", "mlp"))}, pt.DEFAULT_RULES)


def test_real_model_logical_names_are_all_covered_by_default_rules():
    from symbol_tuning.models import decoder, decoder_model

    model = decoder_model.model_from_config(decoder.DecoderConfig.preset("tiny", dtype="float32"))
    abstract = jax.eval_shape(lambda key: model.get_initial_variables(key, {"decoder_input_tokens": (2, 8)}),
                              jax.random.PRNGKey(0))
    pt.check_params_covered(abstract["params"], pt.DEFAULT_RULES)


def test_with_rules_sets_activation_rules_inside_the_context():
    rules = (("batch", "data"),)
    with pt.with_rules(rules):
        assert tuple(nn.get_logical_axis_rules()) == rules
    assert tuple(nn.get_logical_axis_rules()) != rules


def test_make_global_batch_splits_rows_over_data_and_fsdp():
    mesh = pt.create_mesh(pt.MeshConfig(ici_data=2, ici_fsdp=2, ici_tensor=2))
    local = {"decoder_input_tokens": np.arange(8 * 5, dtype=np.int32).reshape(8, 5),
             "decoder_loss_weights": np.ones((8, 5), np.float32)}
    batch = pt.make_global_batch(local, mesh)
    assert pt.host_shard_info() == (0, 1)
    for name, value in local.items():
        np.testing.assert_array_equal(np.asarray(batch[name]), value)
        assert {s.data.shape for s in batch[name].addressable_shards} == {(2, 5)}  # 8 rows / (data 2 x fsdp 2)
        assert batch[name].sharding.spec == P(("data", "fsdp"))


def test_make_global_batch_rejects_rows_not_divisible_by_devices():
    mesh = pt.create_mesh(pt.MeshConfig(ici_data=8))
    with pytest.raises(ValueError, match="'decoder_target_tokens'.*global batch 6.*8 devices"):
        pt.make_global_batch({"decoder_target_tokens": np.zeros((6, 4), np.int32)}, mesh)

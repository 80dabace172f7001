"""Will this run fit? A per-device memory plan of a training run, without allocating (`symbol-tuning plan`
is its command).

Shapes come from `jax.eval_shape` and layouts from the run's logical axis rules on a
`jax.sharding.AbstractMesh` of the topology's size, so a 512-chip pod is planned on a laptop. Per device:

- params, optimizer state (the configured one and the alternative: Adafactor's factored moments vs
  AdamW's two full moments) and gradients (param dtype, sharded like the params; a second buffer
  for accumulation when num_microbatches > 1): exact, from each array's shard shape.
- activations: an estimate. With b = rows per device per microbatch = batch / (data * fsdp) /
  num_microbatches, s = activation itemsize, d = d_model, tp = the "tensor" size, A = heads * head_dim,
  K = kv_heads * head_dim, H = heads, f = d_ff, an attention sublayer with T queries over S keys keeps
  b*T*(2d + 2A/tp)*s + b*S*(2K/tp)*s + b*(H/tp)*T*S*(4 + s) bytes (norm in/out, q, context, k, v,
  float32 scores and probabilities) and an MLP sublayer b*T*(2d + 3f/tp)*s. A layer "saves" all of
  that with remat "none"; with "minimal" only the weight-matmul outputs b*T*(2d + A/tp + 2f/tp)*s +
  b*S*(2K/tp)*s ("dots" adds the scores b*(H/tp)*T*S*s; "minimal_attention" adds each attention
  sublayer's context b*T*(A/tp)*s); with "full" only its input b*T*d*s ("attention": that input plus
  each attention sublayer's context b*T*(A/tp)*s). With
  remat, one layer's full set is live again while it is recomputed. The logits add
  3 * b*Lt*(vocab/tp)*4 (float32 logits, softmax, gradient).
  Encoder layers: T = S = inputs; decoder layers: self T = S = targets plus cross-attention T = targets,
  S = inputs; decoder-only: T = S = inputs + targets (prefix LM rows). Scan or not, all layers count.
  Backward adds one layer's float32 score gradients b*(H/tp)*T*S*8, and T5's shared relative position
  bias 3*(H/tp)*T*T*4 per stack (the gathered table, its transpose and its gradient).
  On GPU topologies, self-attention that `models.layers.resolve_attention_impl` sends to cuDNN's fused
  kernel keeps no scores: instead its mask and bias as one bf16 bias b*hb*T*S*s (hb = H/tp for T5's
  per-head relative-position bias, 1 for a decoder's mask) and a float32 log-sum-exp b*(H/tp)*T*4,
  and backward adds one bias gradient of that shape. Checked against one H100 80GB (AdamW, bf16,
  benchmarks/README.md): Flan-T5-large batch 32 in 1024 / out 64 plans 71.5 GiB vs 86 GB measured
  without remat, 17.2 vs 16.1 with remat full; Flan-T5-base 26.9 vs 30.2; the 1.1B decoder without
  remat 43.7 vs 64.3. That last gap was float32 copies of norm and SiLU intermediates kept for the
  backward pass; norms and gated activations are now rematerialised (`layers.rms_norm`,
  `layers.gated_activation`: -21% compiled temp memory for a 4-layer bf16 decoder on the CPU, -23%
  for T5), not yet re-measured on a GPU, so without remat leave more headroom than the default.
- total vs the chip's HBM less `headroom` (default 10%) for XLA's buffers and fragmentation.

On simulated CPU devices (and any local devices of the topology's kind and number) the train step is
also lowered and compiled ahead of time, and XLA's memory analysis is printed beside the estimate.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh

from symbol_tuning.models.families import get_family
from symbol_tuning.models.layers import resolve_attention_impl
from symbol_tuning.training import optimizers, partitioning, train_state
from symbol_tuning.training.topologies import GiB, Topology
from symbol_tuning.training.train_step import StepOptions, make_train_step

ALT_OPTIMIZER = {"adafactor": "adamw", "adamw": "adafactor"}
EMBEDDING_PARAMS = ("token_embed", "lm_head")
COMPILE_MAX_PARAMS = 500_000_000


class PlanError(ValueError):
    """A plan that cannot be made from its inputs (the flag, file or value at fault is named)."""


def input_shapes(family: str, batch_size: int, feature_lengths: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """Global packed batch shapes of a model family (decoder-only rows hold inputs + targets)."""
    li, lt = int(feature_lengths["inputs"]), int(feature_lengths["targets"])
    if family == "encoder_decoder":
        names = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
        shapes = {n: (batch_size, li) for n in names}
        for n in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids",
                  "decoder_positions"):
            shapes[n] = (batch_size, lt)
        return shapes
    names = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_causal_attention",
             "decoder_segment_ids", "decoder_positions")
    return {n: (batch_size, li + lt) for n in names}


def _shard_bytes(x: Any, problems: list[str], path: str) -> int:
    """Bytes of one device's shard of abstract array `x`; a dim its mesh axes do not divide is a problem
    (jit rejects it), counted with the shard rounded up."""
    try:
        shape = x.sharding.shard_shape(x.shape)
    except ValueError:
        mesh, spec = x.sharding.mesh, tuple(x.sharding.spec) + (None,) * (len(x.shape) - len(x.sharding.spec))
        splits = [math.prod(mesh.shape[a] for a in ((s,) if isinstance(s, str) else (s or ()))) for s in spec]
        shape = tuple(-(-dim // n) for dim, n in zip(x.shape, splits))
        problems.append(f"{path}: shape {tuple(x.shape)} is not divisible by its sharding {x.sharding.spec} "
                        f"over mesh {dict(mesh.shape)}")
    return math.prod(shape) * jnp.dtype(x.dtype).itemsize


def _tree_bytes(tree: Any, problems: list[str], prefix: str) -> int:
    return sum(_shard_bytes(x, problems, prefix + jax.tree_util.keystr(p))
               for p, x in jax.tree_util.tree_leaves_with_path(tree))


def param_counts(abstract_params: Any) -> dict[str, int]:
    """Total, embedding (token embedding and untied LM head) and non-embedding parameter counts."""
    total = embedding = 0
    for path, x in jax.tree_util.tree_leaves_with_path(abstract_params):
        n = math.prod(x.shape)
        total += n
        if any(getattr(k, "key", None) in EMBEDDING_PARAMS for k in path):
            embedding += n
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def _shape_facts(config: Any) -> dict[str, Any]:
    """The fields the activation estimate needs, from a T5Config or a DecoderConfig."""
    c = config
    if hasattr(c, "num_encoder_layers"):
        return dict(d=c.d_model, heads=c.num_heads, kv_heads=c.num_heads, head_dim=c.d_kv, d_ff=c.d_ff,
                    vocab=c.vocab_size, enc_layers=c.num_encoder_layers, dec_layers=c.num_decoder_layers)
    return dict(d=c.d_model, heads=c.num_heads, kv_heads=c.num_kv_heads, head_dim=c.head_dim, d_ff=c.d_ff,
                vocab=c.vocab_size, enc_layers=0, dec_layers=c.num_layers)


def activation_bytes(*, config: Any, family: str, rows: int, feature_lengths: Mapping[str, int],
                     tensor: int, backend: str = "tpu") -> int:
    """Per-device activation estimate (see the module docstring for the formula) for `rows` rows.

    On `backend` "gpu", self-attention sublayers for which `resolve_attention_impl` picks cuDNN's fused
    kernel keep no scores: their mask and bias reach cuDNN as one bf16 bias [b, hb, T, S] (hb = heads for
    T5, whose relative-position bias is per head; 1 for a decoder's packing / prefix mask), kept for the
    backward pass, which adds its gradient of the same shape; plus a float32 log-sum-exp b*(H/tp)*T.
    """
    f = _shape_facts(config)
    s = jnp.dtype(config.dtype).itemsize
    remat = config.remat_policy
    d, tp, b = f["d"], tensor, rows
    a, k, h, ff = f["heads"] * f["head_dim"] / tp, f["kv_heads"] * f["head_dim"] / tp, f["heads"] / tp, f["d_ff"] / tp
    bias_heads = h if family == "encoder_decoder" else 1

    def fused(t: int, src: int) -> bool:
        return resolve_attention_impl(config.attention_impl, dtype=config.dtype, head_dim=f["head_dim"],
                                      has_mask=True, query_len=t, key_len=src, backend=backend) == "cudnn"

    def attn(t: int, src: int, saved: str) -> float:
        kv = b * src * 2 * k * s
        if saved in ("minimal", "dots", "minimal_attention"):
            # weight-matmul outputs; "dots" also keeps XLA's score matmuls, "minimal_attention" the context
            scores = b * h * t * src * s if saved == "dots" and not fused(t, src) else 0
            context = b * t * a * s if saved == "minimal_attention" else 0
            return b * t * (d + a) * s + kv + scores + context
        # cuDNN keeps its bias and log-sum-exp; XLA keeps float32 scores and the probabilities
        kept = b * (bias_heads * t * src * s + h * t * 4) if fused(t, src) else b * h * t * src * (4 + s)
        return b * t * (2 * d + 2 * a) * s + kv + kept

    def mlp(t: int, saved: str) -> float:
        minimal = saved in ("minimal", "dots", "minimal_attention")
        return b * t * (d + 2 * ff) * s if minimal else b * t * (2 * d + 3 * ff) * s

    def layer(t: int, cross_src: int | None, saved: str) -> float:
        if saved == "full":
            return b * t * d * s
        if saved == "attention":  # the layer input plus each attention sublayer's context
            return b * t * d * s + b * t * a * s * (2 if cross_src else 1)
        return attn(t, t, saved) + mlp(t, saved) + (attn(t, cross_src, saved) if cross_src else 0.0)

    def score_grads(t: int, src: int) -> float:
        return b * bias_heads * t * src * s if fused(t, src) else b * h * t * src * 8

    li, lt = int(feature_lengths["inputs"]), int(feature_lengths["targets"])
    if family == "encoder_decoder":
        stacks = [(f["enc_layers"], li, None), (f["dec_layers"], lt, li)]
        logits_len = lt
    else:
        stacks = [(f["dec_layers"], li + lt, None)]
        logits_len = li + lt
    saved = sum(n * layer(t, src, remat) for n, t, src in stacks if n)
    recompute = 0.0 if remat == "none" else max(layer(t, src, "none") for n, t, src in stacks if n)
    backward = max(max(score_grads(t, t), score_grads(t, src) if src else 0.0) for n, t, src in stacks if n)
    relpos = sum(3 * h * t * t * 4 for n, t, _ in stacks if n) if family == "encoder_decoder" else 0.0
    logits = 3 * b * logits_len * (f["vocab"] / tp) * 4
    return int(saved + recompute + backward + relpos + logits)


def _optimizer_state_bytes(name: str, abstract_params: Any, param_shardings: Any, mesh: Any,
                           problems: list[str]) -> int:
    opt = optimizers.make_optimizer(name=name, learning_rate=1e-3)
    abstract_opt = jax.eval_shape(opt.init, abstract_params)
    shardings = train_state.optimizer_state_shardings(abstract_opt, abstract_params, param_shardings, mesh)
    tree = jax.tree_util.tree_map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                                  abstract_opt, shardings)
    return _tree_bytes(tree, problems, f"{name} state")


def compiled_memory(*, model: Any, optimizer: Any, mesh_config: partitioning.MeshConfig, rules: Any,
                    shapes: Mapping[str, tuple[int, ...]], num_devices: int, num_microbatches: int = 1,
                    ) -> dict[str, int]:
    """XLA's memory analysis of the train step compiled ahead of time on the first `num_devices` local
    devices (per device, bytes)."""
    mesh = partitioning.create_mesh(mesh_config, devices=jax.devices()[:num_devices])
    abstract = train_state.abstract_train_state(model=model, optimizer=optimizer, input_shapes=shapes, mesh=mesh,
                                                rules=rules)
    shardings = train_state.state_shardings(abstract)
    batch_sh = partitioning.batch_sharding(mesh)
    step = make_train_step(model=model, optimizer=optimizer, state_shardings=shardings, batch_shardings=batch_sh,
                           mesh=mesh, rules=rules, options=StepOptions(num_microbatches=num_microbatches))
    batch = {n: jax.ShapeDtypeStruct(s, jnp.int32, sharding=batch_sh) for n, s in shapes.items()}
    with jax.set_mesh(mesh), partitioning.with_rules(rules):
        stats = step.jitted.lower(abstract, batch).compile().memory_analysis()
    if stats is None:
        raise PlanError("the backend returned no memory analysis for the compiled train step")
    out = {k: int(getattr(stats, f"{k}_in_bytes")) for k in
           ("argument_size", "output_size", "temp_size", "alias_size", "generated_code_size")}
    out["peak_estimate"] = out["argument_size"] + out["output_size"] + out["temp_size"] - out["alias_size"]
    return out


def plan(*, model: Any, topology: Topology, mesh_config: partitioning.MeshConfig, batch_size: int,
         feature_lengths: Mapping[str, int], rules: Any = partitioning.DEFAULT_RULES,
         optimizer_name: str = "adafactor", num_microbatches: int = 1, headroom: float = 0.1,
         compile_mode: str = "auto") -> dict[str, Any]:
    """A per-device memory plan (a JSON-able dict) for training `model` on `topology`.

    `compile_mode`: "auto" compiles when the local devices are of the topology's platform, at least as many,
    one slice, and the model has at most COMPILE_MAX_PARAMS parameters; "always" / "never" force it.
    """
    if optimizer_name not in ALT_OPTIMIZER:
        raise PlanError(f"optimizers.make_optimizer.name={optimizer_name!r}: the planner knows {sorted(ALT_OPTIMIZER)}")
    if compile_mode not in ("auto", "always", "never"):
        raise PlanError(f"--compile={compile_mode!r}: expected auto, always or never")
    if not 0 <= headroom < 1:
        raise PlanError(f"--headroom={headroom}: expected a fraction in [0, 1)")
    try:
        ici, dcn = partitioning.mesh_shape(mesh_config, topology.num_chips, topology.num_slices)
    except ValueError as e:
        raise PlanError(f"partitioning.MeshConfig does not match topology {topology.describe()}: {e}") from e
    sizes = tuple(i * j for i, j in zip(ici, dcn))
    mesh = AbstractMesh(sizes, partitioning.MESH_AXES)
    axis = dict(zip(partitioning.MESH_AXES, sizes))
    shapes = input_shapes(model.family, batch_size, feature_lengths)
    init_shapes = {n: shapes[n] for n in get_family(model.family).init_features}
    problems: list[str] = []
    optimizer = optimizers.make_optimizer(name=optimizer_name, learning_rate=1e-3)
    try:
        abstract = train_state.abstract_train_state(model=model, optimizer=optimizer, input_shapes=init_shapes,
                                                    mesh=mesh, rules=tuple(tuple(r) for r in rules))
    except ValueError as e:
        raise PlanError(f"train.logical_axis_rules: {e}") from e
    param_shardings = jax.tree_util.tree_map(lambda x: x.sharding, abstract.params)
    params_b = _tree_bytes(abstract.params, problems, "params")
    opt_b = {optimizer_name: _tree_bytes(abstract.opt_state, problems, f"{optimizer_name} state")}
    alt = ALT_OPTIMIZER[optimizer_name]
    opt_b[alt] = _optimizer_state_bytes(alt, abstract.params, param_shardings, mesh, [])
    grads_b = params_b * (2 if num_microbatches > 1 else 1)
    batch_split = axis["data"] * axis["fsdp"]
    if batch_size % batch_split:
        problems.append(f"train.batch_size={batch_size} is not divisible by data x fsdp = {batch_split} devices")
    rows = -(-batch_size // batch_split)
    if rows % num_microbatches:
        problems.append(f"train.num_microbatches={num_microbatches} does not divide the {rows} rows per device")
    rows_mb = max(1, rows // num_microbatches)
    act_b = activation_bytes(config=model.config, family=model.family, rows=rows_mb,
                             feature_lengths=feature_lengths, tensor=axis["tensor"],
                             backend=topology.spec.platform)
    total = params_b + opt_b[optimizer_name] + grads_b + act_b
    budget = int(topology.hbm_bytes * (1 - headroom))
    counts = param_counts(abstract.params)
    result: dict[str, Any] = {
        "model": {"family": model.family, "config": model.config.to_dict()},
        "topology": {**dataclasses.asdict(topology), "hosts": topology.hosts, "hbm_bytes": topology.hbm_bytes},
        "mesh": {"ici": list(ici), "dcn": list(dcn), "axes": axis},
        "batch": {"global": batch_size, "rows_per_device": rows, "num_microbatches": num_microbatches,
                  "feature_lengths": dict(feature_lengths)},
        "params": counts,
        "per_device_bytes": {"params": params_b, "optimizer": opt_b[optimizer_name], "gradients": grads_b,
                             "activations": act_b, "total": total},
        "optimizer": {"name": optimizer_name, "state_bytes_per_device": opt_b},
        "total_param_bytes": sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
                                 for x in jax.tree_util.tree_leaves(abstract.params)),
        "budget_bytes": budget, "headroom": headroom, "problems": problems,
        "fits": total <= budget and not problems, "compiled": None, "compile_note": None,
    }
    platform_ok = jax.default_backend() == topology.spec.platform and jax.device_count() >= topology.num_chips
    devices_note = (f"needs {topology.num_chips} local {topology.spec.platform} devices, this process has "
                    f"{jax.device_count()} {jax.default_backend()}")
    why_not = ("sharding problems" if problems else devices_note if not platform_ok else
               f"more than {COMPILE_MAX_PARAMS:,} parameters" if counts["total"] > COMPILE_MAX_PARAMS else
               "multi-slice" if topology.num_slices > 1 else None)
    if compile_mode == "always" and not platform_ok:
        raise PlanError(f"--compile=always: {devices_note}")
    if compile_mode == "always" or (compile_mode == "auto" and why_not is None):
        result["compiled"] = compiled_memory(model=model, optimizer=optimizer, mesh_config=mesh_config,
                                             rules=tuple(tuple(r) for r in rules), shapes=shapes,
                                             num_devices=topology.num_chips, num_microbatches=num_microbatches)
    elif compile_mode == "auto":
        result["compile_note"] = f"not compiled ahead of time: {why_not}"
    return result


def _fmt_bytes(n: float) -> str:
    return f"{n / GiB:9.2f} GiB" if n >= GiB else f"{n / (1 << 20):9.2f} MiB"


def _fmt_count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def format_plan(p: Mapping[str, Any]) -> str:
    """A readable table of a plan."""
    c, t, m, b = p["params"], p["topology"], p["mesh"], p["batch"]
    dev = p["per_device_bytes"]
    cfg = p["model"]["config"]
    lines = [
        f"model      {p['model']['family']}  params {_fmt_count(c['total'])} (embedding {_fmt_count(c['embedding'])}, "
        f"non-embedding {_fmt_count(c['non_embedding'])})  dtype {cfg['dtype']} / params {cfg['param_dtype']}  "
        f"remat {cfg['remat_policy']}  scan {cfg['scan_layers']}",
        f"topology   {t['num_chips']} x {t['chip']} in {t['num_slices']} slice(s), {t['hosts']} host(s), "
        f"HBM {t['hbm_bytes'] / GiB:.0f} GiB per chip",
        f"mesh       data {m['axes']['data']}  fsdp {m['axes']['fsdp']}  tensor {m['axes']['tensor']}  "
        f"(ici {m['ici']}, dcn {m['dcn']})",
        f"batch      {b['global']} rows x {b['feature_lengths']}, {b['rows_per_device']} rows per device, "
        f"{b['num_microbatches']} microbatch(es)",
        "",
        "per device                      bytes",
        f"  params                 {_fmt_bytes(dev['params'])}   (all params {p['total_param_bytes'] / GiB:.1f} GiB)",
    ]
    for name, nbytes in p["optimizer"]["state_bytes_per_device"].items():
        used = "  <- used" if name == p["optimizer"]["name"] else "  (for comparison)"
        lines.append(f"  optimizer {name:<12} {_fmt_bytes(nbytes)}{used}")
    lines += [
        f"  gradients              {_fmt_bytes(dev['gradients'])}",
        f"  activations (estimate) {_fmt_bytes(dev['activations'])}",
        f"  total                  {_fmt_bytes(dev['total'])}   of {p['budget_bytes'] / GiB:.2f} GiB usable "
        f"({(1 - p['headroom']) * 100:.0f}% of HBM): {'FITS' if p['fits'] else 'DOES NOT FIT'}",
    ]
    if p["compiled"]:
        k = p["compiled"]
        lines += ["", "XLA memory analysis (compiled ahead of time, per device)",
                  f"  arguments {_fmt_bytes(k['argument_size'])}  outputs {_fmt_bytes(k['output_size'])}  "
                  f"temporaries {_fmt_bytes(k['temp_size'])}  aliased {_fmt_bytes(k['alias_size'])}",
                  f"  peak (args + outputs + temps - aliased) {_fmt_bytes(k['peak_estimate'])}  "
                  f"vs estimate {_fmt_bytes(dev['total'])}"]
    elif p["compile_note"]:
        lines += ["", p["compile_note"]]
    if p["problems"]:
        lines += ["", "problems (the run would fail):"] + [f"  - {x}" for x in p["problems"][:10]]
        if len(p["problems"]) > 10:
            lines.append(f"  ... and {len(p['problems']) - 10} more")
    return "\n".join(lines)

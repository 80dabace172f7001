"""`python -m symbol_tuning.plan --gin_file=models/flan_t5_xxl.gin --gin_file=topologies/tpu_v5p_128.gin
--gin_file=runs/symbol_tune.gin`: will this run fit? The per-device memory plan (training/memory_plan.py)
of the train run a gin config describes, without allocating.

Exit codes: 0 it fits, 1 it does not fit or cannot be sharded (the reason is printed), 2 bad flags,
gin files, presets or a mesh that does not match the topology.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import gin

from symbol_tuning import gin_utils
from symbol_tuning.data.pipeline import InputOptions
from symbol_tuning.training import memory_plan, optimizers, partitioning
from symbol_tuning.training.train_step import StepOptions


def _resolve(value: Any) -> Any:
    """A gin binding's value with macros and `@configurable()` calls evaluated (`@fn` stays a callable)."""
    if isinstance(value, gin.config.ConfigurableReference):
        return value.scoped_configurable_fn() if value.evaluate else value.scoped_configurable_fn
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v) for v in value)
    return value


def _train_param(name: str, default: Any = None) -> Any:
    """train.<name> as bound in gin, else `default` (the option dataclasses' default the train entry uses)."""
    try:
        value = gin.query_parameter(f"train.{name}")
    except ValueError:
        return default
    return None if value is gin.REQUIRED else _resolve(value)


def plan_from_gin(*, headroom: float = 0.1, compile_mode: str = "auto") -> dict[str, Any]:
    """`plan` for the train run described by the gin config parsed so far (finalised or not)."""
    from symbol_tuning import train as train_mod  # noqa: F401 -- registers the train configurables
    try:
        topology = gin.get_configurable("topologies.Topology")()
    except (ValueError, TypeError) as e:
        raise memory_plan.PlanError(f"no topology: give a --gin_file=topologies/*.gin binding topologies.Topology "
                                    f"({e})") from e
    try:
        model = _train_param("model")
    except (ValueError, KeyError, TypeError) as e:
        raise memory_plan.PlanError(f"models.build_model: {e}") from e
    if model is None or model is gin.REQUIRED:
        raise memory_plan.PlanError("train.model is not bound: give a --gin_file=models/*.gin and a run file")
    opt_fn = _train_param("optimizer", optimizers.make_optimizer)
    opt_name = "adafactor"
    if opt_fn is not None:
        try:
            opt_name = gin.query_parameter("optimizers.make_optimizer.name")
        except ValueError:
            pass
    mesh_config = _train_param("mesh_config") or partitioning.MeshConfig()
    inputs = InputOptions.create(batch_size=int(_train_param("batch_size", InputOptions.batch_size)),
                                 feature_lengths=_train_param("feature_lengths"))
    step = StepOptions(num_microbatches=int(_train_param("num_microbatches", StepOptions.num_microbatches)))
    return memory_plan.plan(model=model, topology=topology, mesh_config=mesh_config, batch_size=inputs.batch_size,
                            feature_lengths=inputs.feature_lengths,
                            rules=_train_param("logical_axis_rules", partitioning.DEFAULT_RULES),
                            optimizer_name=opt_name, num_microbatches=step.num_microbatches, headroom=headroom,
                            compile_mode=compile_mode)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="symbol-tuning plan", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    gin_utils.add_gin_flags(parser)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    parser.add_argument("--headroom", type=float, default=0.1, help="fraction of HBM kept free (default 0.1)")
    parser.add_argument("--compile", choices=("auto", "always", "never"), default="auto",
                        help="lower and compile the train step on local devices for XLA's memory analysis")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from symbol_tuning import train as train_mod  # noqa: F401 -- registers the configurables gin files use
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        rest, macro_bindings = gin_utils.split_macro_flags(argv)
        args, unknown = parser.parse_known_args(rest)
        if unknown:
            raise gin_utils.GinConfigError(f"unrecognized flags: {' '.join(unknown)}")
        if not args.gin_file:
            raise gin_utils.GinConfigError("give --gin_file for a model, a topology and a run")
        gin_utils.parse_gin_flags(args, macro_bindings, finalize=False)
        result = plan_from_gin(headroom=args.headroom, compile_mode=args.compile)
    except (gin_utils.GinConfigError, memory_plan.PlanError) as e:
        print(f"symbol-tuning plan: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError) as e:
        print(f"symbol-tuning plan: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str) if args.json else memory_plan.format_plan(result))
    return 0 if result["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())

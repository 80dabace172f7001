"""`python -m symbol_tuning.train --gin_file=runs/tiny_cpu.gin --gin.MODEL_DIR="'/tmp/run'"`: the train entry.

T5X-style flags (see gin_utils): --gin_file, --gin_bindings, --gin.MACRO=value, --gin_search_paths. Several
processes start JAX's distributed runtime from the environment (JAX_*, Slurm, TPU VM) or T5X's flags
--coordinator_address --process_count --process_index (training.distributed). Every piece the run needs is a
keyword-only gin configurable here (model, mesh, optimizer/schedule, input stream, the entry itself),
so the model, partitioning and trainer modules stay free of gin. Exit codes: 0 done or preempted
(checkpoint saved), 1 a run error (named), 2 bad flags or gin config.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
from typing import Any, Callable, Mapping, Sequence

import gin
import jax

from symbol_tuning import gin_utils
from symbol_tuning.data import validation
from symbol_tuning.data.pipeline import InputOptions
from symbol_tuning.training import distributed, optimizers, partitioning, run_record
from symbol_tuning.training.train_step import StepOptions
from symbol_tuning.training.trainer import LoopOptions

log = logging.getLogger(__name__)

gin.external_configurable(partitioning.MeshConfig, name="MeshConfig", module="partitioning")
gin.external_configurable(optimizers.make_schedule, name="make_schedule", module="optimizers")
gin.external_configurable(optimizers.make_optimizer, name="make_optimizer", module="optimizers")
gin.constant("partitioning.DEFAULT_RULES", partitioning.DEFAULT_RULES)


@gin.configurable(module="models")
def build_model(*, family: str = gin.REQUIRED, preset: str | None = None,
                overrides: Mapping[str, Any] | None = None, config_file: str | None = None) -> Any:
    """A BaseModel of `family` from a named preset (plus field overrides) or a config.json of ours."""
    from symbol_tuning.models.families import get_family, model_for

    config_cls = get_family(family, source=f"models.build_model.family={family!r}").config_cls
    overrides = dict(overrides or {})
    if (preset is None) == (config_file is None):
        raise ValueError("models.build_model: give exactly one of preset= and config_file=")
    if preset is not None:
        config = config_cls.preset(preset, **overrides)
    else:
        from symbol_tuning.training import storage

        values = storage.read_json(config_file)
        values = values.get("config", values)
        config = config_cls.from_dict({**values, **overrides})
    return model_for(config)


@gin.configurable(module="data")
def make_batch_stream(*, name: str, vocabulary: str, feature_lengths: Mapping[str, int], batch_size: int,
                      model_family: str, pack: bool, seed: int, shard_index: int, num_shards: int) -> Any:
    """This host's resumable stream of numpy batches for a registered task or mixture (pipeline.BatchStream).

    `name` may also be any name in SeqIO's registries (a mixture added with plain seqio.MixtureRegistry.add
    over our tasks, or a SeqIO task with inputs/targets), when the module registering it has been imported
    (e.g. an `import my_tasks` line in a gin file): seqio_bridge.adopt makes it one of ours, same stream.
    """
    import symbol_tuning.tasks  # noqa: F401 -- registers the embedded default mixtures
    from symbol_tuning.data.pipeline import BatchStream
    from symbol_tuning.data.task_registry import is_registered
    from symbol_tuning.data.vocabularies import get_vocabulary

    if not is_registered(name) and "seqio" in sys.modules:  # only a SeqIO user's name can be in SeqIO
        from symbol_tuning.data import seqio_bridge

        seqio_bridge.adopt(name)

    return BatchStream(name, vocabulary=get_vocabulary(vocabulary), feature_lengths=dict(feature_lengths),
                       batch_size=batch_size, model_family=model_family, pack=pack, seed=seed,
                       shard_index=shard_index, num_shards=num_shards)


@gin.configurable(module="data")
def local_symbol_mixture(*, name: str = "local_symbol_mixture", data_root: str = gin.REQUIRED,
                         datasets: Sequence[str] = gin.REQUIRED, symbol_rate: float = 0.16,
                         instruction_path: str | None = None, instruction_task: str = "instructions:gen",
                         max_examples: int = 25_000, skip_bad_rows: bool = False) -> str:
    """Register a symbol-tuning mixture over raw local copies of real datasets and return its name.

    `datasets` are names known to `data.sources.layouts` (the paper's names or the folder names of a local
    data root such as ../shared/data), read from `data_root`; symbol data is `symbol_rate` of the
    stream and the rest comes from `instruction_path` (any (inputs, targets) file a Flan export gives,
    see instruction_data) or, without it, the generated instruction task. Bind it as the mixture:
    `MIXTURE_OR_TASK_NAME = @data.local_symbol_mixture()`. Evaluation datasets are refused.
    """
    import symbol_tuning.tasks  # noqa: F401 -- registers the generated instruction task
    from symbol_tuning.data.decontamination import assert_tuning_names_allowed
    from symbol_tuning.data.sources.layouts import local_source
    from symbol_tuning.data.sources.local_files import load_local
    from symbol_tuning.data.task_builders import instruction_task as make_instruction_task
    from symbol_tuning.data.task_builders import register_mixture
    from symbol_tuning.data.task_registry import TaskRegistry

    if instruction_path is not None:
        from symbol_tuning.data.instruction_data import load_instruction_data

        instruction_task = f"instructions:{os.path.basename(os.path.normpath(instruction_path))}"
        data = load_instruction_data(instruction_path, skip_bad_rows=skip_bad_rows)
        TaskRegistry.add(make_instruction_task(instruction_task, lambda: data, num_examples=len(data.examples)),
                         overwrite=True)
    assert_tuning_names_allowed(list(datasets))
    # Renamed so that these tasks never alias the paper's hub-backed "symbol_tuning:<name>" tasks.
    sources = [local_source(d, data_root, "train") for d in datasets]
    counts: list[dict[str, int]] = [{} for _ in datasets]
    loaded = [dataclasses.replace(load_local(source=src, split="train", skip_bad_rows=skip_bad_rows,
                                             max_examples=max_examples, counts=n), name=f"local/{d}")
              for d, src, n in zip(datasets, sources, counts)]
    mixture = register_mixture(name, datasets=loaded, symbol_rate=symbol_rate, instruction_task=instruction_task,
                               overwrite=True)
    if symbol_rate > 0:  # checked at run start with the run's prompt budget (data.validation)
        for (task, _), data, src, n in zip(mixture.entries, loaded, sources, counts):
            validation.note_tuning_data(task, data, files=validation.file_list(src.files), skip_bad_rows=skip_bad_rows,
                                        rebuild=functools.partial(_replace_task, task),
                                        skipped_bad_rows=n.get("skipped_bad_rows", 0))
    return name


def _replace_task(task: str, data: Any) -> None:
    from symbol_tuning.data.task_builders import symbol_task
    from symbol_tuning.data.task_registry import TaskRegistry

    TaskRegistry.add(symbol_task(task, lambda: data, num_examples=len(data.examples), check_eval=False),
                     overwrite=True)


def _validate_data(stream: Any, model_dir: str) -> bool:
    """The run-start data pass over the stream's tasks (data.validation); its report goes to
    MODEL_DIR/data_validation.json (process 0). True when a task was rebuilt without dropped rows."""
    sampler, budget = getattr(stream, "sampler", None), getattr(stream, "budget", None)
    if sampler is None or budget is None:
        return False
    reports, changed = validation.validate_run([t.name for t in sampler.tasks],
                                               max_input_length=budget.max_input_length, length_fn=budget.length_fn,
                                               seed=getattr(stream, "seed", 0))
    if reports and jax.process_index() == 0:
        from symbol_tuning.training import storage

        storage.write_text(storage.resolve(model_dir, what="model_dir") / validation.REPORT_NAME,
                           json.dumps({"datasets": [dataclasses.asdict(r) for r in reports]}, indent=1,
                                      sort_keys=True))
    return changed


def load_init_params(path: str, *, model: Any = None, mesh: Any = None, rules: Any = None) -> Any:
    """Params to start from: our native checkpoint (config.json with "family"), an HF checkpoint directory,
    or an Orbax training dir (`<dir>` for its latest step, `<dir>/<step>` for one step; params only, read
    into this run's mesh whatever mesh and host count wrote them, checked against `model`'s config)."""
    from symbol_tuning.models.native_io import load_params_dir
    from symbol_tuning.training import checkpoints, storage

    root = storage.resolve(path, what="init_checkpoint")
    step = None
    if root.name.isdigit() and not (root / "config.json").exists() and (root / checkpoints.STATE_ITEM).is_dir():
        root, step = root.parent, int(root.name)
    if not (root / "config.json").is_file():
        if root.is_dir() and checkpoints.finished_steps(os.fspath(root)):
            from symbol_tuning.evaluation.checkpoint_loading import load_for_eval

            loaded = load_for_eval(os.fspath(root), model_config=getattr(model, "config", None), step=step,
                                   mesh=mesh, rules=rules)
            log.info("init_checkpoint: params of %s step %d", root, loaded.step)
            return loaded.params
        raise FileNotFoundError(f"init_checkpoint {path}: no config.json and no finished Orbax steps")
    return storage.with_local_copy(os.fspath(root), lambda local: load_params_dir(local)[1])


def _input_shapes(stream: Any, hosts: int) -> dict[str, tuple[int, ...]]:
    """Global batch shapes read from the stream's next batch, then the stream is put back where it was."""
    position = stream.state()
    first = next(iter(stream))
    stream.restore(position)
    return {k: (v.shape[0] * hosts,) + tuple(v.shape[1:]) for k, v in first.items() if getattr(v, "ndim", 0) >= 1}


def _check_given(values: Mapping[str, Any]) -> None:
    missing = sorted(k for k, v in values.items() if v is gin.REQUIRED)
    if missing:
        raise ValueError(f"train: required parameters not set: {missing} (bind train.<name> or its macro)")


@gin.configurable(module="train")
def train(*, model: Any = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED, model_dir: str = gin.REQUIRED,
          train_steps: int = gin.REQUIRED, batch_size: int = InputOptions.batch_size,
          feature_lengths: Mapping[str, int] | None = None, vocabulary: str = InputOptions.vocabulary,
          pack: bool = InputOptions.pack, seed: int = LoopOptions.seed,
          checkpoint_every: int = LoopOptions.checkpoint_every, keep_checkpoints: int = LoopOptions.keep_checkpoints,
          log_every: int = LoopOptions.log_every, optimizer: Callable[..., Any] = optimizers.make_optimizer,
          learning_rate_fn: Any = 1e-3, mesh_config: partitioning.MeshConfig | None = None,
          logical_axis_rules: partitioning.Rules = partitioning.DEFAULT_RULES, init_checkpoint: str | None = None,
          num_microbatches: int = StepOptions.num_microbatches, z_loss: float = StepOptions.z_loss,
          loss_normalizing_factor: Any = "num_real_target_tokens", stream_fn: Callable[..., Any] = make_batch_stream,
          eval_fn: Callable | None = None, eval_every: int | None = LoopOptions.eval_every,
          data_shards: int | None = None, loss_impl: str = StepOptions.loss_impl,
          loss_vocab_chunk: int = StepOptions.loss_vocab_chunk, grad_norm: bool = StepOptions.grad_norm) -> Any:
    """Build model, mesh, optimizer and this host's input stream, then run `trainer.train`.

    `batch_size` is global, read as `data_shards` shards of batch_size / data_shards rows (default: one per
    host; training.data_shards), each host reading its block of shards, so a run resumes exactly on any
    host count that divides data_shards; `optimizer` is a factory called with
    `learning_rate=learning_rate_fn` (a float or an optax schedule such as @optimizers.make_schedule()).
    Defaults live in the option dataclasses (InputOptions, StepOptions, LoopOptions) the planner reads too.
    """
    from symbol_tuning.training import trainer

    _check_given(dict(model=model, mixture_or_task_name=mixture_or_task_name, model_dir=model_dir,
                      train_steps=train_steps))
    inputs = InputOptions.create(batch_size=batch_size, feature_lengths=feature_lengths, vocabulary=vocabulary,
                                 pack=pack)
    loop = LoopOptions(steps=train_steps, checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
                       log_every=log_every, eval_every=eval_every, seed=seed)
    step = StepOptions(num_microbatches=num_microbatches, z_loss=z_loss,
                       loss_normalizing_factor=loss_normalizing_factor, loss_impl=loss_impl,
                       loss_vocab_chunk=loss_vocab_chunk, grad_norm=grad_norm)
    from symbol_tuning.training.data_shards import ShardedStream

    process_index, process_count = partitioning.host_shard_info()
    num_shards = process_count if data_shards is None else int(data_shards)
    if num_shards < 1 or num_shards % process_count:
        raise ValueError(f"train.data_shards={num_shards} is not a positive multiple of the {process_count} hosts")
    if inputs.batch_size % num_shards:
        raise ValueError(f"train.batch_size={inputs.batch_size} is not divisible by the {num_shards} data shards")
    mesh = partitioning.create_mesh(mesh_config or partitioning.MeshConfig())
    rules = tuple(tuple(r) for r in logical_axis_rules)
    run_record.write_run_record(model_dir, model_config=model.config, gin_config=gin.config_str())
    init_params = load_init_params(init_checkpoint, model=model, mesh=mesh, rules=rules) if init_checkpoint else None

    def make_stream() -> ShardedStream:
        return ShardedStream(
            lambda shard: stream_fn(name=mixture_or_task_name, vocabulary=inputs.vocabulary,
                                    feature_lengths=inputs.feature_lengths, batch_size=inputs.batch_size // num_shards,
                                    model_family=model.family, pack=inputs.pack, seed=seed, shard_index=shard,
                                    num_shards=num_shards),
            num_shards=num_shards, process_index=process_index, process_count=process_count)

    stream = make_stream()
    if _validate_data(stream.streams[0], model_dir):
        stream = make_stream()
    return trainer.train(
        model=model, model_dir=model_dir, train_stream=stream, optimizer=optimizer(learning_rate=learning_rate_fn),
        learning_rate_fn=learning_rate_fn, mesh=mesh, rules=rules,
        input_shapes=_input_shapes(stream, process_count), options=loop, step_options=step,
        init_params=init_params, eval_fn=eval_fn)


def build_parser() -> argparse.ArgumentParser:
    """The train flags (gin flags plus multi-process start-up)."""
    parser = gin_utils.FlagParser(prog="symbol-tuning train", description=__doc__.split("\n\n")[0],
                                  allow_abbrev=False)
    gin_utils.add_gin_flags(parser)
    distributed.add_flags(parser)
    gin_utils.add_verbose_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        rest, macro_bindings = gin_utils.split_macro_flags(argv)
    except gin_utils.GinConfigError as e:
        parser.error(str(e))
    args, unknown = parser.parse_known_args(rest)
    if unknown:
        parser.error(f"unrecognized flags: {' '.join(unknown)}")
    from symbol_tuning.training.console import quiet_libraries

    quiet_libraries(args.verbose)
    try:
        distributed.start(args)
    except ValueError as e:
        parser.error(str(e))
    try:
        gin_utils.parse_gin_flags(args, macro_bindings)
    except gin_utils.GinConfigError as e:
        print(f"symbol-tuning train: {e}", file=sys.stderr)
        return 2
    from symbol_tuning.training.checkpoint_integrity import DamagedCheckpointError
    from symbol_tuning.training.run_lock import ModelDirLockedError

    try:
        result = train()
    except (ValueError, FileNotFoundError, KeyError, FloatingPointError, DamagedCheckpointError,
            ModelDirLockedError) as e:
        distributed.report_failure(e, command="train")
        print(f"symbol-tuning train: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        distributed.report_failure(e, command="train")
        raise
    distributed.mark_done()
    status = "preempted" if result.preempted else "done"
    resumed = f", resumed from step {result.resumed_from}" if result.resumed_from is not None else ""
    print(f"symbol-tuning train: {status} at step {result.step}{resumed} (checkpoints {result.checkpoint_steps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Loading classification datasets from HF datasets (hub or local) and TFDS into `ClassificationData`.

Every source yields `(where, record)` rows that `rows.make_examples` validates, so a bad row is
reported as "<dataset>: <hf id or path>[<split>] row <i>: ...". Rows whose label is one of the
spec's `unlabeled` values (GLUE test -1, RAFT 0) are dropped and counted, not treated as bad.

Subsetting: when a split has more valid rows than `max_examples`, we keep a uniformly random subset
of exactly `max_examples` rows, drawn without replacement by `numpy.random.default_rng(seed)` over the
valid rows' positions and kept in source order; the same (data, seed, max_examples) gives the same
subset on every machine.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from symbol_tuning.data.examples import ClassificationData
from symbol_tuning.data.rows import DataError, FieldMapping, make_examples
from symbol_tuning.data.specs import DatasetSpec, all_specs, get_spec

log = logging.getLogger(__name__)

T = TypeVar("T")
_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv",
                  ".arrow": "arrow"}
_BATCH = 1000


def seeded_subset(items: Sequence[T], max_examples: int | None, seed: int) -> tuple[T, ...]:
    """At most `max_examples` items: all of them when few enough, else a seeded random subset in order."""
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be positive, got {max_examples}")
    if max_examples is None or len(items) <= max_examples:
        return tuple(items)
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=max_examples, replace=False))
    return tuple(items[i] for i in keep)


def _spec(spec_or_name: DatasetSpec | str) -> DatasetSpec:
    return spec_or_name if isinstance(spec_or_name, DatasetSpec) else get_spec(spec_or_name)


def _drop_unlabeled(rows: Iterator[tuple[str, Mapping[str, Any]]], *, label_field: str,
                    unlabeled: Sequence[str], dataset: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Rows without a gold label (per the spec) are skipped and counted in one log line."""
    dropped = 0
    for where, record in rows:
        raw = record.get(label_field)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        if unlabeled and raw is not None and str(raw).strip() in unlabeled:
            dropped += 1
            continue
        yield where, record
    if dropped:
        log.info("%s: dropped %d rows without a gold label (label in %s)", dataset, dropped, list(unlabeled))


def _finish(spec: DatasetSpec, split: str, rows: Iterator[tuple[str, Mapping[str, Any]]], *, mapping: FieldMapping,
            label_names: Sequence[str], source: str, skip_bad_rows: bool, max_examples: int | None,
            seed: int) -> ClassificationData:
    rows = _drop_unlabeled(rows, label_field=mapping.label_field, unlabeled=spec.unlabeled, dataset=spec.name)
    examples = make_examples(rows, dataset=spec.name, mapping=mapping, label_names=label_names,
                             skip_bad_rows=skip_bad_rows)
    if not examples:
        raise DataError(f"{spec.name}: {source}: no usable labelled rows")
    cap = spec.cap(split) if max_examples is None else max_examples
    return ClassificationData(name=spec.name, split=split, examples=seeded_subset(examples, cap, seed),
                              label_names=tuple(label_names), instruction=spec.instruction,
                              task_type=spec.task_type)


def _check_columns(columns: Sequence[str], mapping: FieldMapping, *, dataset: str, where: str) -> None:
    """A column the mapping needs but the source lacks fails every row: report it once, up front."""
    for field in (*mapping.text_fields, mapping.label_field):
        if field not in columns:
            raise DataError(f"{dataset}: {where} row 0: column {field!r} is missing; the columns are "
                            f"{list(columns)}")


def _is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f))
                                       for f in ("dataset_dict.json", "state.json"))


def _local_files(path: str) -> tuple[str, dict[str, Any]]:
    """The `datasets` builder and its keyword arguments for a data file or a directory of data files."""
    if os.path.isdir(path):
        files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names
                       if os.path.splitext(f)[1].lower() in _FILE_BUILDERS)
        if not files:
            raise FileNotFoundError(f"{path}: no saved HF dataset and no data files "
                                    f"({', '.join(sorted(_FILE_BUILDERS))}) in this directory")
        exts = {os.path.splitext(f)[1].lower() for f in files}
        builders = {_FILE_BUILDERS[e] for e in exts}
        if len(builders) > 1 or exts == {".csv", ".tsv"}:
            raise ValueError(f"{path}: mixed data file kinds {sorted(exts)}; point at one file or one kind")
        kwargs: dict[str, Any] = {"data_dir": path}
        ext = exts.pop()
    else:
        ext = os.path.splitext(path)[1].lower()
        if ext not in _FILE_BUILDERS:
            raise ValueError(f"{path}: unknown data file kind {ext!r}; expected one of {sorted(_FILE_BUILDERS)} "
                             "or a directory saved with save_to_disk")
        kwargs = {"data_files": {"train": path}}
    if ext == ".tsv":
        kwargs["delimiter"] = "\t"
    return _FILE_BUILDERS[ext], kwargs


def _open_hf(spec: DatasetSpec, hf_split: str, path: str | None, cache_dir: str | None):
    """The `datasets.Dataset` for one split, and the name rows are reported under."""
    import datasets

    if path is None:
        return datasets.load_dataset(spec.hf_path, spec.hf_config, split=hf_split, cache_dir=cache_dir), spec.hf_id
    if not os.path.exists(path):
        raise FileNotFoundError(f"{spec.name}: local dataset path {path!r} does not exist")
    if _is_saved_dataset(path):
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if hf_split not in loaded:
                raise DataError(f"{spec.name}: {path}: no split {hf_split!r}; splits are {sorted(loaded)}")
            return loaded[hf_split], path
        return loaded, path
    builder, kwargs = _local_files(path)
    loaded = datasets.load_dataset(builder, cache_dir=cache_dir, **kwargs)
    if os.path.isfile(path):
        return loaded["train"], path
    if hf_split not in loaded:
        raise DataError(f"{spec.name}: {path}: no split {hf_split!r} among the data files (splits found: "
                        f"{sorted(loaded)}); name files like '{hf_split}.{builder}' or point at one file")
    return loaded[hf_split], path


def _hf_rows(ds, columns: Sequence[str], where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    ds = ds.select_columns(list(columns))
    i = 0
    for batch in ds.iter(batch_size=_BATCH):
        for j in range(len(batch[columns[0]])):
            yield f"{where} row {i}", {c: batch[c][j] for c in columns}
            i += 1


def load_hf(spec: DatasetSpec | str, split: str, *, path: str | None = None, skip_bad_rows: bool = False,
            max_examples: int | None = None, seed: int = 0, cache_dir: str | None = None) -> ClassificationData:
    """One split of a dataset from the HF hub, or from a local save_to_disk directory or data file(s).

    split is our split name ("train", "eval"; mapped through spec.splits) or a source split name.
    path: a `save_to_disk` directory (DatasetDict: the split is picked; a single Dataset is used as
    is), one data file (parquet/json/jsonl/csv/tsv/arrow; it is the split), or a directory of data
    files whose names carry the split ("train.jsonl", "validation-00000.parquet").
    max_examples None applies the spec's cap (25k tuning train, 100 evaluation queries).
    """
    spec = _spec(spec)
    hf_split = spec.source_split(split)
    ds, source = _open_hf(spec, hf_split, path, cache_dir)
    where = f"{source}[{hf_split}]"
    mapping = spec.mapping
    _check_columns(ds.column_names, mapping, dataset=spec.name, where=where)
    columns = list(dict.fromkeys((*mapping.text_fields, mapping.label_field)))
    return _finish(spec, split, _hf_rows(ds, columns, where), mapping=mapping, label_names=spec.label_names,
                   source=where, skip_bad_rows=skip_bad_rows, max_examples=max_examples, seed=seed)


def _hide_accelerators_from_tf():
    """Import TF with GPUs hidden, so the data pipeline never takes accelerator memory from JAX."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        if tf.config.get_visible_devices("GPU"):
            raise RuntimeError("TensorFlow already initialised with visible GPUs; import symbol_tuning data "
                               "loaders before running TF code") from None
    return tf


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value  # left as bytes: rows.make_examples reports it naming the row (strict UTF-8)
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_tfds(spec_or_name: DatasetSpec | str, split: str, *, data_dir: str | None = None,
              mapping: FieldMapping | None = None, label_names: Sequence[str] | None = None,
              skip_bad_rows: bool = False, max_examples: int | None = None, seed: int = 0,
              download: bool = True) -> ClassificationData:
    """One split of a TFDS dataset. spec_or_name: a DatasetSpec, a registered dataset name (its
    tfds_name, mapping and label names are used), or a TFDS builder name with `mapping` and
    `label_names` given. Bytes features are decoded to str; ClassLabel features arrive as ints."""
    if isinstance(spec_or_name, DatasetSpec) or spec_or_name in all_specs():
        spec = _spec(spec_or_name)
        if spec.tfds_name is None:
            raise ValueError(f"{spec.name}: no TFDS builder is known for this dataset; use source='hf'")
        tfds_name = spec.tfds_name
    elif mapping is None or label_names is None:
        raise ValueError(f"TFDS builder {spec_or_name!r} is not a registered dataset: pass mapping= and "
                         "label_names=")
    else:
        tfds_name = spec_or_name
        spec = DatasetSpec(name=tfds_name.replace("/", "_").lower(), role="tuning", task_type="misc",
                           hf_path=f"tfds:{tfds_name}", hf_config=None, splits={"train": "train"}, mapping=mapping,
                           label_names=tuple(label_names))
    mapping = mapping or spec.mapping
    label_names = tuple(label_names or spec.label_names)
    _hide_accelerators_from_tf()
    import tensorflow_datasets as tfds

    tfds_split = spec.source_split(split)
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    if tfds_split not in builder.info.splits:
        raise DataError(f"{spec.name}: TFDS {tfds_name}: no split {tfds_split!r}; splits are "
                        f"{sorted(builder.info.splits)}")
    where = f"tfds:{tfds_name}[{tfds_split}]"
    _check_columns(list(builder.info.features.keys()), mapping, dataset=spec.name, where=where)
    columns = list(dict.fromkeys((*mapping.text_fields, mapping.label_field)))

    def rows():
        for i, ex in enumerate(tfds.as_numpy(builder.as_dataset(split=tfds_split, shuffle_files=False))):
            yield f"{where} row {i}", {c: _decode(ex[c]) for c in columns}

    return _finish(spec, split, rows(), mapping=mapping, label_names=label_names, source=where,
                   skip_bad_rows=skip_bad_rows, max_examples=max_examples, seed=seed)


SOURCES = ("hf", "tfds", "local")


def load_classification(spec_or_name: DatasetSpec | str, split: str, *, source: str = "hf", path: str | None = None,
                        data_dir: str | None = None, skip_bad_rows: bool = False, max_examples: int | None = None,
                        seed: int = 0) -> ClassificationData:
    """One front door: source "hf" (hub, or a local HF dataset at `path`), "tfds" (builder data in
    `data_dir`) or "local" (JSONL/CSV/TSV/text files at `path`, via symbol_tuning.data.sources.local_files)."""
    spec = _spec(spec_or_name)
    if source == "hf":
        return load_hf(spec, split, path=path, skip_bad_rows=skip_bad_rows, max_examples=max_examples, seed=seed)
    if source == "tfds":
        return load_tfds(spec, split, data_dir=data_dir, skip_bad_rows=skip_bad_rows, max_examples=max_examples,
                         seed=seed)
    if source == "local":
        if path is None:
            raise ValueError(f"{spec.name}: source='local' needs a path")
        from symbol_tuning.data.sources import local_files

        return local_files.load_local(spec=spec, split=split, path=path, skip_bad_rows=skip_bad_rows,
                                      max_examples=max_examples, seed=seed)
    raise ValueError(f"{spec.name}: unknown source {source!r}; expected one of {SOURCES}")

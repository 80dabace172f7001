"""Reading and writing HF safetensors checkpoints (single file or sharded with an index), strictly.

Never unpickles anything: only `.safetensors` files are read.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import struct
import tempfile
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not match what the model config expects."""


class DamagedFileError(ValueError):
    """A weights file that is truncated, has a damaged header, or holds non-float tensors; names the file."""


FLOAT_DTYPES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}
_ITEM_SIZES = {**FLOAT_DTYPES, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1, "I16": 2, "U16": 2,
               "I32": 4, "U32": 4, "I64": 8, "U64": 8}
_MAX_HEADER = 100 * 2**20


def read_header(file: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """tensor name -> (dtype, shape) of a safetensors file, after checking the file is whole: a readable
    header, every tensor's bytes inside the file, and float dtypes only (BF16/F16/F32/F64). Raises
    DamagedFileError naming the file (and the tensor) and what is wrong."""
    try:
        size = os.path.getsize(file)
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise DamagedFileError(f"{file}: {size} bytes, too short for a safetensors header (truncated?)")
            (length,) = struct.unpack("<Q", head)
            if length > min(_MAX_HEADER, size - 8):
                raise DamagedFileError(f"{file}: header length {length} exceeds the file ({size} bytes): "
                                       "truncated or not a safetensors file")
            raw = f.read(length)
    except OSError as e:
        raise DamagedFileError(f"{file}: cannot be read ({e.strerror or e})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise DamagedFileError(f"{file}: damaged safetensors header ({e})") from None
    data_size, out = size - 8 - length, {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise DamagedFileError(f"{file}: tensor {name!r}: damaged header entry {entry!r}") from None
        if dtype not in FLOAT_DTYPES:
            raise DamagedFileError(f"{file}: tensor {name!r} has dtype {dtype}; weights must be floats "
                                   f"({', '.join(FLOAT_DTYPES)})")
        if end > data_size:
            raise DamagedFileError(f"{file}: tensor {name!r} ends at byte {end} of the data but the file holds "
                                   f"{data_size} (truncated)")
        if not 0 <= start <= end or end - start != int(np.prod(shape, dtype=np.int64)) * _ITEM_SIZES[dtype]:
            raise DamagedFileError(f"{file}: tensor {name!r}: offsets {[start, end]} do not fit shape {list(shape)} "
                                   f"of {dtype}")
        out[name] = (dtype, shape)
    return out


@contextlib.contextmanager
def open_checked(file: str) -> Iterator[Any]:
    """`safe_open(file)` after read_header's checks; a safetensors error while reading names the file."""
    from safetensors import SafetensorError

    read_header(file)
    try:
        with safe_open(file, framework="numpy") as f:
            yield f
    except SafetensorError as e:
        raise DamagedFileError(f"{file}: {e}") from None


def checkpoint_files(path: str) -> list[str]:
    """The safetensors files of an HF checkpoint directory (or a single file path)."""
    if os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise ValueError(f"{path}: only .safetensors checkpoints are read (pickled .bin files are refused)")
        return [path]
    index = os.path.join(path, INDEX_NAME)
    if os.path.exists(index):
        record = read_json_file(index)
        weight_map = record.get("weight_map") if isinstance(record, dict) else None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no 'weight_map' object")
        for tensor, name in sorted(weight_map.items()):
            if not isinstance(name, str) or not name.endswith(".safetensors") or os.path.basename(name) != name:
                raise ValueError(f"{index}: tensor {tensor!r} maps to {name!r}, not a .safetensors file in "
                                 f"{path} (pickled .bin shards are refused)")
        return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    single = os.path.join(path, SINGLE_NAME)
    if os.path.exists(single):
        return [single]
    raise FileNotFoundError(
        f"{path}: no {SINGLE_NAME} or {INDEX_NAME} (only safetensors checkpoints are supported)")


def load_tensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint as numpy arrays (bf16 is widened to float32)."""
    out: dict[str, np.ndarray] = {}
    for file in checkpoint_files(path):
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: shard listed in {INDEX_NAME} is missing")
        with open_checked(file) as f:
            for name in f.keys():
                if name in out:
                    raise CheckpointMismatchError(f"{file}: tensor {name!r} appears in more than one shard")
                out[name] = _load_one(f, file, name)
    return out


def _load_one(handle, file: str, name: str) -> np.ndarray:
    try:
        return handle.get_tensor(name)
    except TypeError:  # bfloat16 has no numpy dtype in safetensors' numpy backend
        import torch  # only needed for bf16 checkpoints
        from safetensors.torch import load_file

        return load_file(file)[name].to(torch.float32).numpy()


def check_tensors(tensors: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], *,
                  source: str, ignore: tuple[str, ...] = ()) -> None:
    """Raise CheckpointMismatchError naming every missing, extra or misshaped tensor."""
    problems = []
    for name in sorted(expected):
        if name not in tensors:
            problems.append(f"missing tensor {name!r} (expected shape {tuple(expected[name])})")
        elif tuple(tensors[name].shape) != tuple(expected[name]):
            problems.append(f"tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                            f"expected {tuple(expected[name])}")
    for name in sorted(set(tensors) - set(expected)):
        if not any(name.endswith(suffix) for suffix in ignore):
            problems.append(f"unexpected tensor {name!r} with shape {tuple(tensors[name].shape)}")
    if problems:
        raise CheckpointMismatchError(f"{source}: " + "; ".join(problems))


def save_tensors(tensors: Mapping[str, np.ndarray], directory: str, *, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write tensors as model.safetensors, or as shards plus an index when larger than max_shard_bytes.

    Files are written under temporary names and renamed at the end, so a failed export leaves no
    checkpoint that looks complete.
    """
    os.makedirs(directory, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if shards[-1] and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    if len(shards) == 1:
        names = [SINGLE_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    written = []
    for name, shard in zip(names, shards):
        tmp = os.path.join(directory, name + ".tmp")
        save_file(shard, tmp, metadata={"format": "pt"})
        written.append((tmp, os.path.join(directory, name)))
    if len(shards) > 1:
        index = {"metadata": {"total_size": int(sum(a.nbytes for a in tensors.values()))},
                 "weight_map": {t: n for n, s in zip(names, shards) for t in s}}
        tmp = os.path.join(directory, INDEX_NAME + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
        written.append((tmp, os.path.join(directory, INDEX_NAME)))
    for tmp, final in written:
        os.replace(tmp, final)


def write_directory_atomically(directory: str, write: Callable[[str], Any], *, prefix: str = ".tmp-") -> None:
    """Run `write(tmp_dir)` in a sibling temporary directory, then rename it to `directory`.

    A directory that exists and is not empty is refused; on any failure the temporary directory is
    removed, so a checkpoint directory only ever appears complete.
    """
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and os.listdir(directory):
        raise FileExistsError(f"{directory}: output directory exists and is not empty")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        write(tmp)
        if os.path.exists(directory):
            os.rmdir(directory)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_hf_checkpoint(out_dir: str, tensors: Mapping[str, np.ndarray], hf_config: Mapping[str, Any]) -> None:
    """An HF checkpoint directory (safetensors + config.json), written atomically."""
    def write(tmp: str) -> None:
        save_tensors(tensors, tmp)
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2)

    write_directory_atomically(out_dir, write, prefix=".export-")


def read_json_file(path: str) -> Any:
    """A JSON file's content; a parse error names the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def read_hf_config(path: str) -> dict[str, Any]:
    """config.json of an HF checkpoint directory, with clear errors for a missing or bad file."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no config.json in the HF checkpoint directory")
    return read_json_file(file)


def refuse_pickles(path: str) -> None:
    """Raise when a directory holds only pickled .bin / .pt weights (they are never unpickled)."""
    pickles = sorted(glob.glob(os.path.join(path, "*.bin")) + glob.glob(os.path.join(path, "*.pt")))
    if pickles and not glob.glob(os.path.join(path, "*.safetensors")):
        raise ValueError(f"{pickles[0]}: only pickled weights found in {path}; they are refused (never unpickled). "
                         "Convert the checkpoint to safetensors first.")

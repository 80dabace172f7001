"""Feature conversion: tokenized (inputs, targets) examples -> T5X model feature batches, in numpy.

Two model families (feature names as in `symbol_tuning.models.base`):

- encoder-decoder (`pack_encoder_decoder`): inputs go to the encoder, targets to the decoder;
- decoder-only prefix LM (`pack_prefix_lm`): inputs then targets in one decoder row, loss on the
  targets only, `decoder_causal_attention` 1 on the input prefix plus one position (the position
  that reads the last input token and predicts the first target, as SeqIO's PrefixLMFeatureConverter).

Packing order: greedy into the *current* row in stream order. An example that does not fit every
feature of the current row closes it and opens the next one (SeqIO's tf-ops packer does the same
within each of its chunks of `max(length)` examples, so outputs match SeqIO exactly whenever a
stream has no more examples than that). This keeps a batch a contiguous slice of the stream, which
is what makes the batch pipeline resumable from one integer.

Examples must already end with EOS (the tokenizing step appends it) and contain no 0 tokens.
An example longer than its row raises `ExampleTooLongError` naming its origin; only targets may be
cut, and only with `truncate_targets=True`. Numpy only: importable without TensorFlow.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

TokenPair = tuple[np.ndarray, np.ndarray]


class ExampleTooLongError(ValueError):
    """A tokenized example does not fit its feature length (the prompt budget should have prevented it)."""


def _origin(origins: Sequence[str] | None, i: int) -> str:
    return origins[i] if origins is not None else f"example {i} of this batch"


def _as_tokens(x, what: str, origins, i: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{_origin(origins, i)}: {what} must be a 1-D token array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{_origin(origins, i)}: {what} must hold integer token ids, got dtype {arr.dtype}")
    return arr.astype(np.int32, copy=False)


def assign_rows(lengths: np.ndarray, capacities: Sequence[int], *, pack: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Greedy current-row placement: (row [N], offset [N, F]) of each example.

    `lengths` is [N, F]: the length of each of F features of each example; `capacities` the row
    length per feature. Every example must already fit an empty row.
    """
    lengths = np.asarray(lengths, dtype=np.int64).reshape(len(lengths), len(capacities))
    n = lengths.shape[0]
    rows = np.zeros(n, dtype=np.int64)
    offsets = np.zeros_like(lengths)
    if not pack:
        rows[:] = np.arange(n)
        return rows, offsets
    caps = [int(c) for c in capacities]
    fill = [0] * len(caps)
    row = 0
    rows_list = rows.tolist()
    lens = lengths.tolist()
    offs = offsets.tolist()
    for i in range(n):
        li = lens[i]
        if i and any(f + n > c for f, n, c in zip(fill, li, caps)):
            row += 1
            fill = [0] * len(caps)
        rows_list[i] = row
        offs[i] = list(fill)
        fill = [f + n for f, n in zip(fill, li)]
    return np.asarray(rows_list, dtype=np.int64), np.asarray(offs, dtype=np.int64).reshape(n, len(caps))


def count_fitting(lengths: np.ndarray, capacities: Sequence[int], *, num_rows: int, pack: bool = True) -> int:
    """How many leading examples fit into `num_rows` rows under greedy current-row packing."""
    lengths = np.asarray(lengths, dtype=np.int64).reshape(len(lengths), len(capacities))
    if not pack:
        return min(num_rows, len(lengths))
    rows, _ = assign_rows(lengths, capacities, pack=True)
    return int(np.searchsorted(rows, num_rows, side="left"))


def _scatter(tokens: Sequence[np.ndarray], lens: np.ndarray, rows: np.ndarray, offs: np.ndarray,
             num_rows: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write each example's tokens into a zero [num_rows, width] array; also its segment ids and positions."""
    out = np.zeros((num_rows, width), dtype=np.int32)
    seg = np.zeros((num_rows, width), dtype=np.int32)
    pos = np.zeros((num_rows, width), dtype=np.int32)
    total = int(lens.sum())
    if total == 0:
        return out, seg, pos
    flat = np.concatenate([t for t in tokens]) if len(tokens) > 1 else tokens[0]
    cum = np.concatenate([[0], np.cumsum(lens)[:-1]])
    starts = rows * width + offs
    within = np.arange(total, dtype=np.int64) - np.repeat(cum, lens)
    dest = np.repeat(starts, lens) + within
    out.reshape(-1)[dest] = flat
    pos.reshape(-1)[dest] = within
    # Segment ids count examples per row from 1, in stream order.
    first_in_row = np.concatenate([[True], rows[1:] != rows[:-1]])
    idx = np.arange(len(rows))
    row_start_idx = np.maximum.accumulate(np.where(first_in_row, idx, 0))
    seg_of_example = (idx - row_start_idx + 1).astype(np.int32)
    seg.reshape(-1)[dest] = np.repeat(seg_of_example, lens)
    return out, seg, pos


def _shift_right(targets: np.ndarray, segment_ids: np.ndarray | None) -> np.ndarray:
    """Autoregressive decoder inputs: targets shifted right by one, 0 at each segment start."""
    shifted = np.zeros_like(targets)
    shifted[:, 1:] = targets[:, :-1]
    if segment_ids is not None:
        starts = np.ones_like(segment_ids, dtype=bool)
        starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
        shifted[starts] = 0
    return shifted


def _num_rows(rows: np.ndarray, batch_size: int | None, origins_desc: str) -> int:
    needed = int(rows[-1]) + 1 if len(rows) else 0
    if batch_size is None:
        return max(needed, 1)
    if needed > batch_size:
        raise ValueError(f"{origins_desc}: {needed} rows are needed but batch_size is {batch_size}; "
                         "use count_fitting() to choose how many examples to pass")
    return batch_size


def _check_targets(arr: np.ndarray, limit: int, truncate: bool, what: str, origins, i: int) -> np.ndarray:
    if arr.size > limit:
        if not truncate or limit <= 0:
            raise ExampleTooLongError(
                f"{_origin(origins, i)}: {what} has {arr.size} tokens but only {max(limit, 0)} fit "
                f"(pass truncate_targets=True to cut targets)")
        return arr[:limit]
    return arr


def pack_encoder_decoder(examples: Sequence[TokenPair], *, input_length: int = 2048, target_length: int = 512,
                         batch_size: int | None = None, pack: bool = True, truncate_targets: bool = False,
                         origins: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Encoder-decoder features for these (inputs, targets) examples, packed or one per row.

    `batch_size=None` uses as many rows as needed; otherwise the batch has exactly that many rows
    (zero rows at the end) and too many examples raise. `origins` name each example in errors.
    """
    ins, tgs = [], []
    for i, ex in enumerate(examples):
        inp = _as_tokens(ex[0], "inputs", origins, i)
        tgt = _as_tokens(ex[1], "targets", origins, i)
        if inp.size > input_length:
            raise ExampleTooLongError(f"{_origin(origins, i)}: inputs has {inp.size} tokens but input_length "
                                      f"is {input_length}; inputs are never truncated")
        ins.append(inp)
        tgs.append(_check_targets(tgt, target_length, truncate_targets, "targets", origins, i))
    lens = np.array([[a.size, b.size] for a, b in zip(ins, tgs)], dtype=np.int64).reshape(-1, 2)
    rows, offs = assign_rows(lens, (input_length, target_length), pack=pack)
    num_rows = _num_rows(rows, batch_size, "pack_encoder_decoder")
    enc, enc_seg, enc_pos = _scatter(ins, lens[:, 0], rows, offs[:, 0], num_rows, input_length)
    dec, dec_seg, dec_pos = _scatter(tgs, lens[:, 1], rows, offs[:, 1], num_rows, target_length)
    out = {
        "encoder_input_tokens": enc,
        "decoder_target_tokens": dec,
        "decoder_input_tokens": _shift_right(dec, dec_seg if pack else None),
        "decoder_loss_weights": (dec_seg > 0).astype(np.int32),
    }
    if pack:
        out.update(encoder_segment_ids=enc_seg, encoder_positions=enc_pos,
                   decoder_segment_ids=dec_seg, decoder_positions=dec_pos)
    return out


def pack_prefix_lm(examples: Sequence[TokenPair], *, length: int, batch_size: int | None = None,
                   pack: bool = True, truncate_targets: bool = False,
                   origins: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Decoder-only prefix-LM features: each example is inputs + targets in one row segment.

    Loss weights are 1 on target tokens only; `decoder_causal_attention` is 1 on the inputs and
    the one position after them (SeqIO's convention). Other arguments as `pack_encoder_decoder`.
    """
    seqs, in_lens = [], []
    for i, ex in enumerate(examples):
        inp = _as_tokens(ex[0], "inputs", origins, i)
        tgt = _as_tokens(ex[1], "targets", origins, i)
        if inp.size >= length:
            raise ExampleTooLongError(f"{_origin(origins, i)}: inputs has {inp.size} tokens, leaving no room for "
                                      f"targets in a decoder row of length {length}")
        tgt = _check_targets(tgt, length - inp.size, truncate_targets, "inputs + targets", origins, i)
        seqs.append(np.concatenate([inp, tgt]))
        in_lens.append(inp.size)
    lens = np.array([s.size for s in seqs], dtype=np.int64).reshape(-1, 1)
    rows, offs = assign_rows(lens, (length,), pack=pack)
    num_rows = _num_rows(rows, batch_size, "pack_prefix_lm")
    dec, seg, pos = _scatter(seqs, lens[:, 0], rows, offs[:, 0], num_rows, length)
    # Per-token inputs width of its example, then compare with positions.
    width = np.zeros((num_rows, length), dtype=np.int32)
    if seqs:
        width_of_tokens = np.repeat(np.asarray(in_lens, dtype=np.int32), lens[:, 0])
        # Non-padding positions in row-major order are exactly the tokens in stream order.
        width.reshape(-1)[np.flatnonzero(seg.reshape(-1) > 0)] = width_of_tokens
    nonpad = seg > 0
    out = {
        "decoder_target_tokens": dec,
        "decoder_input_tokens": _shift_right(dec, seg if pack else None),
        "decoder_loss_weights": (nonpad & (pos >= width)).astype(np.int32),
        "decoder_causal_attention": (nonpad & (pos < width + 1)).astype(np.int32),
    }
    if pack:
        out.update(decoder_segment_ids=seg, decoder_positions=pos)
    return out

"""Our numpy feature converters against SeqIO's own converters on the same tokenized examples."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from symbol_tuning.data.feature_converters import (
    ExampleTooLongError,
    count_fitting,
    pack_encoder_decoder,
    pack_prefix_lm,
)

tf.config.set_visible_devices([], "GPU")


def _examples(n, max_in, max_tg, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        li, lt = int(rng.integers(1, max_in + 1)), int(rng.integers(1, max_tg + 1))
        inp = np.append(rng.integers(2, 300, li - 1), 1).astype(np.int32)
        tgt = np.append(rng.integers(2, 300, lt - 1), 1).astype(np.int32)
        out.append((inp, tgt))
    return out


def _seqio(converter, examples, lengths):
    def gen():
        for a, b in examples:
            yield {"inputs": a, "targets": b}
    spec = {"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)}
    ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
    rows = list(converter(ds, lengths).as_numpy_iterator())
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _assert_same(ours, theirs):
    assert set(ours) == set(theirs)
    for k in theirs:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


def test_packed_encoder_decoder_equals_seqio_enc_dec_converter_feature_by_feature():
    ex = _examples(20, 12, 6)
    ours = pack_encoder_decoder(ex, input_length=32, target_length=16)
    theirs = _seqio(seqio.EncDecFeatureConverter(pack=True), ex, {"inputs": 32, "targets": 16})
    assert ours["encoder_segment_ids"].max() >= 2  # packing really happened
    _assert_same(ours, theirs)


def test_unpacked_encoder_decoder_equals_seqio_enc_dec_converter():
    ex = _examples(7, 12, 6, seed=1)
    ours = pack_encoder_decoder(ex, input_length=16, target_length=8, pack=False)
    theirs = _seqio(seqio.EncDecFeatureConverter(pack=False), ex, {"inputs": 16, "targets": 8})
    _assert_same(ours, theirs)


def test_packed_prefix_lm_equals_seqio_prefix_lm_converter_feature_by_feature():
    ex = _examples(18, 10, 6, seed=2)
    ours = pack_prefix_lm(ex, length=24 + 8)
    theirs = _seqio(seqio.PrefixLMFeatureConverter(pack=True), ex, {"inputs": 24, "targets": 8})
    assert ours["decoder_segment_ids"].max() >= 2
    _assert_same(ours, theirs)


def test_unpacked_prefix_lm_equals_seqio_prefix_lm_converter():
    ex = _examples(6, 10, 6, seed=3)
    ours = pack_prefix_lm(ex, length=16, pack=False)
    theirs = _seqio(seqio.PrefixLMFeatureConverter(pack=False), ex, {"inputs": 10, "targets": 6})
    _assert_same(ours, theirs)


def _segments(batch, tok_key, seg_key):
    out = []
    for row, seg in zip(batch[tok_key], batch[seg_key]):
        for s in range(1, seg.max() + 1):
            out.append(tuple(row[seg == s]))
    return out


def test_long_stream_where_seqio_flushes_rows_per_chunk_keeps_same_segments_and_invariants():
    # SeqIO packs chunks of max(length)=16 examples separately, so its rows differ from our
    # stream-wide greedy rows after the first chunk; the segments and invariants must agree.
    ex = _examples(50, 8, 4, seed=4)
    ours = pack_encoder_decoder(ex, input_length=16, target_length=8)
    theirs = _seqio(seqio.EncDecFeatureConverter(pack=True), ex, {"inputs": 16, "targets": 8})
    for tok, seg in [("encoder_input_tokens", "encoder_segment_ids"), ("decoder_target_tokens", "decoder_segment_ids")]:
        assert _segments(ours, tok, seg) == _segments(theirs, tok, seg)
    assert len(ours["encoder_input_tokens"]) <= len(theirs["encoder_input_tokens"])
    seg, pos = ours["decoder_segment_ids"], ours["decoder_positions"]
    np.testing.assert_array_equal(ours["decoder_loss_weights"], (seg > 0).astype(np.int32))
    starts = (pos == 0) & (seg > 0)
    assert (ours["decoder_input_tokens"][starts] == 0).all()


def test_batch_size_pads_zero_rows_and_too_many_examples_raise():
    ex = _examples(3, 4, 3, seed=5)
    out = pack_encoder_decoder(ex, input_length=8, target_length=8, batch_size=4, pack=False)
    assert out["encoder_input_tokens"].shape == (4, 8)
    assert not out["encoder_input_tokens"][3].any()
    with pytest.raises(ValueError, match="batch_size is 2"):
        pack_encoder_decoder(ex, input_length=8, target_length=8, batch_size=2, pack=False)


def test_count_fitting_matches_hand_computed_greedy_rows():
    # capacities (10, 4): rows {0,1} (inputs 6+4, targets 2+2), {2,3} (3+5, 3+1), {4} (5+9 > 10), {5}
    lengths = [(6, 2), (4, 2), (3, 3), (5, 1), (5, 1), (9, 1)]
    assert count_fitting(lengths, (10, 4), num_rows=1) == 2
    assert count_fitting(lengths, (10, 4), num_rows=2) == 4
    assert count_fitting(lengths, (10, 4), num_rows=3) == 5
    assert count_fitting(lengths, (10, 4), num_rows=9) == 6


def test_too_long_inputs_raise_naming_the_dataset_and_index_and_are_never_truncated():
    ex = [(np.arange(2, 12, dtype=np.int32), np.array([5, 1], np.int32))]
    with pytest.raises(ExampleTooLongError, match=r"rte\[17\].*inputs has 10 tokens"):
        pack_encoder_decoder(ex, input_length=8, target_length=4, origins=["rte[17]"])
    with pytest.raises(ExampleTooLongError, match=r"rte\[17\]"):
        pack_prefix_lm(ex, length=10, origins=["rte[17]"], truncate_targets=True)


def test_truncate_targets_opt_in_keeps_the_first_target_tokens_and_default_raises():
    ex = [(np.array([3, 4, 1], np.int32), np.arange(2, 12, dtype=np.int32))]
    with pytest.raises(ExampleTooLongError, match="targets has 10 tokens"):
        pack_encoder_decoder(ex, input_length=4, target_length=6)
    ours = pack_encoder_decoder(ex, input_length=4, target_length=6, truncate_targets=True)
    # SeqIO's converter rejects over-long features, so hand it the first 6 target tokens.
    cut = [(ex[0][0], ex[0][1][:6])]
    theirs = _seqio(seqio.EncDecFeatureConverter(pack=True), cut, {"inputs": 4, "targets": 6})
    _assert_same(ours, theirs)
    lm = pack_prefix_lm(ex, length=8, truncate_targets=True)
    np.testing.assert_array_equal(lm["decoder_target_tokens"][0], [3, 4, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(lm["decoder_loss_weights"][0], [0, 0, 0, 1, 1, 1, 1, 1])

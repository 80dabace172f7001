"""The batch stream: determinism, host sharding, exact resume, mixture rates and decontamination."""
import collections
import json

import numpy as np
import pytest

from symbol_tuning.data.decontamination import ContaminationError
from symbol_tuning.data.examples import ClassificationData, Example
from symbol_tuning.data.feature_converters import ExampleTooLongError
from symbol_tuning.data.pipeline import BLOCK, BatchStream, MixtureSampler
from symbol_tuning.data.task_builders import register_mixture
from symbol_tuning.data.task_registry import (
    MixtureRegistry,
    PromptTask,
    TaskRegistry,
    get_task_or_mixture,
    register_eval_data,
)
from symbol_tuning.data.vocabularies import ByteVocabulary

VOCAB = ByteVocabulary()


def _toy(name, kind="symbol", long_at=None):
    def fn(index, seed, budget=None):
        words = " ".join(["w"] * ((index * 7 + seed) % 5))
        text = f"{name}#{index}@{seed} {words}" if index != long_at else "x" * 500
        return {"inputs": text, "targets": f"t{index % 3}", "options": ("t0", "t1", "t2"), "answer": index % 3,
                "dataset": name, "index": index}
    return PromptTask(name, None, fn, kind)


@pytest.fixture(scope="module", autouse=True)
def toy_tasks():
    for name in ("toy_a", "toy_b", "toy_c"):
        TaskRegistry.add(_toy(name), overwrite=True)
    TaskRegistry.add(_toy("toy_long", long_at=3), overwrite=True)
    MixtureRegistry.add("toy_mix", [("toy_a", 5), ("toy_b", 3), ("toy_c", 2)], overwrite=True)
    yield


def _segments(batch, family="encoder_decoder"):
    """Decoded (inputs, targets) texts of every packed segment, in row order."""
    out = []
    if family == "encoder_decoder":
        for row in range(len(batch["encoder_input_tokens"])):
            es, ds = batch["encoder_segment_ids"][row], batch["decoder_segment_ids"][row]
            for s in range(1, es.max() + 1):
                out.append((VOCAB.decode(batch["encoder_input_tokens"][row][es == s]),
                            VOCAB.decode(batch["decoder_target_tokens"][row][ds == s])))
    else:
        for row in range(len(batch["decoder_target_tokens"])):
            seg, w = batch["decoder_segment_ids"][row], batch["decoder_loss_weights"][row]
            tok = batch["decoder_target_tokens"][row]
            for s in range(1, seg.max() + 1):
                out.append((VOCAB.decode(tok[(seg == s) & (w == 0)]), VOCAB.decode(tok[(seg == s) & (w == 1)])))
    return out


def _stream(name="toy_mix", **kw):
    args = dict(vocabulary=VOCAB, feature_lengths={"inputs": 64, "targets": 8}, batch_size=4)
    args.update(kw)
    return BatchStream(name, **args)


def _take(stream, n):
    return [next(stream) for _ in range(n)]


def test_same_seed_gives_identical_batches_and_another_seed_differs():
    a, b, c = _take(_stream(seed=3), 4), _take(_stream(seed=3), 4), _take(_stream(seed=4), 4)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["encoder_input_tokens"], z["encoder_input_tokens"]) for x, z in zip(a, c))


def test_segments_hold_the_mixture_examples_in_stream_order_with_eos():
    stream = _stream(seed=1)
    batch = next(stream)
    segs = _segments(batch)
    sampler = MixtureSampler("toy_mix", seed=1)
    expected = []
    for pos in range(len(segs)):
        task, index = sampler.locate(pos)
        ex = task.example(index, 1)
        expected.append((ex["inputs"], ex["targets"]))
    assert segs == expected
    ends = batch["encoder_input_tokens"][batch["encoder_segment_ids"] > 0]
    assert (ends == 1).sum() == len(segs)  # one EOS per inputs segment


@pytest.mark.parametrize("num_shards", [2, 4])
def test_host_shards_are_disjoint_and_together_equal_the_single_host_stream(num_shards):
    single = [s for b in _take(_stream(batch_size=8, pack=False), 6) for s in _segments_unpacked(b)]
    per_shard = []
    for k in range(num_shards):
        stream = _stream(batch_size=8 // num_shards, pack=False, shard_index=k, num_shards=num_shards)
        per_shard.append([s for b in _take(stream, 6) for s in _segments_unpacked(b)])
    flat = [s for shard in per_shard for s in shard]
    assert len(set(flat)) == len(flat) == len(single)
    assert sorted(flat) == sorted(single)
    for k, shard in enumerate(per_shard):
        assert shard == single[k::num_shards]


def _segments_unpacked(batch):
    return [(VOCAB.decode(i), VOCAB.decode(t)) for i, t in zip(batch["encoder_input_tokens"],
                                                               batch["decoder_target_tokens"]) if i.any()]


@pytest.mark.parametrize("family,pack,batch_size,skip", [("encoder_decoder", True, 4, 5),
                                                         ("decoder_only", True, 3, 5),
                                                         ("encoder_decoder", False, 1000, 4)])
def test_restored_state_resumes_exactly_the_batches_of_the_uninterrupted_run(family, pack, batch_size, skip):
    # the unpacked case crosses a sampling block boundary (4096 positions) after the save
    run = _stream(model_family=family, pack=pack, batch_size=batch_size, seed=7)
    _take(run, skip)
    state = json.loads(json.dumps(run.state()))
    expected = _take(run, 3)
    resumed = _stream(model_family=family, pack=pack, batch_size=batch_size, seed=7)
    resumed.restore(state)
    got = _take(resumed, 3)
    if not pack:
        assert state["position"] < BLOCK < state["position"] + 3 * batch_size
    for x, y in zip(expected, got):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_restore_rejects_a_state_from_another_stream():
    state = _stream(seed=1).state()
    with pytest.raises(ValueError, match="'seed'"):
        _stream(seed=2).restore(state)


def test_mixture_rates_match_within_tolerance_and_task_indices_count_up():
    sampler = MixtureSampler("toy_mix", seed=11)
    n = 6000
    seen = collections.defaultdict(list)
    for pos in range(n):
        task, index = sampler.locate(pos)
        seen[task.name].append(index)
    for name, p in [("toy_a", 0.5), ("toy_b", 0.3), ("toy_c", 0.2)]:
        count = len(seen[name])
        assert abs(count - n * p) < 4 * np.sqrt(n * p * (1 - p)), (name, count)
        assert seen[name] == list(range(count))


def test_prefix_lm_batches_put_loss_on_targets_only():
    batch = next(_stream(model_family="decoder_only", seed=2))
    segs = _segments(batch, "decoder_only")
    sampler = MixtureSampler("toy_mix", seed=2)
    for pos, (inputs, targets) in enumerate(segs):
        task, index = sampler.locate(pos)
        ex = task.example(index, 2)
        assert (inputs, targets) == (ex["inputs"], ex["targets"])
    assert batch["decoder_target_tokens"].shape == (4, 72)


def test_overlong_example_raises_naming_task_dataset_and_index():
    stream = _stream("toy_long", batch_size=2)
    with pytest.raises(ExampleTooLongError, match=r"'toy_long'.*index 3"):
        _take(stream, 4)


def test_unknown_names_raise_key_error_listing_close_names():
    with pytest.raises(KeyError, match="toy_mix"):
        get_task_or_mixture("toy_mixx")


def _data(name, texts, labels=(0, 1)):
    return ClassificationData(name, "train", tuple(Example(t, labels[i % 2]) for i, t in enumerate(texts)),
                              ("no", "yes"))


def test_register_mixture_rejects_evaluation_datasets_by_name_and_by_text():
    TaskRegistry.add(_toy("toy_instr", kind="instruction"), overwrite=True)
    with pytest.raises(ContaminationError, match="subj"):
        register_mixture("bad_by_name", datasets=["rte", "subj"], symbol_rate=0.5, instruction_task="toy_instr")
    register_eval_data(_data("toy_eval", ["the held-out sentence", "another one"]))
    leaked = _data("toy_leaky", ["fresh text", "The held-out sentence!", "more", "and more"])
    with pytest.raises(ContaminationError, match="toy_eval"):
        register_mixture("bad_by_text", datasets=[leaked], symbol_rate=0.5, instruction_task="toy_instr")
    with pytest.raises(ValueError, match="symbol_rate"):
        register_mixture("bad_rate", datasets=["rte"], symbol_rate=1.5, instruction_task="toy_instr")
    assert "bad_by_name" not in MixtureRegistry.names() and "bad_by_text" not in MixtureRegistry.names()


def test_register_mixture_builds_a_stream_at_the_requested_symbol_rate():
    TaskRegistry.add(_toy("toy_instr", kind="instruction"), overwrite=True)
    clean = _data("toy_clean", [f"sentence number {i}" for i in range(40)])
    mix = register_mixture("toy_symbol_25", datasets=[clean], symbol_rate=0.25, instruction_task="toy_instr",
                           overwrite=True)
    rates = {t.name: p for t, p in mix.leaf_rates()}
    assert rates == pytest.approx({"symbol_tuning:toy_clean": 0.25, "toy_instr": 0.75})
    batch = next(_stream("toy_symbol_25", feature_lengths={"inputs": 2048, "targets": 16}, batch_size=2))
    assert batch["encoder_input_tokens"].shape == (2, 2048)


class _BosBytes(ByteVocabulary):
    """Byte ids with id 2 used as BOS, to check the decoder-only BOS rule."""

    bos_id = 2


def test_decoder_only_rows_start_with_bos_when_the_vocabulary_has_one_and_encoder_rows_end_inputs_with_eos():
    ex = TaskRegistry.get("toy_a").example(0, 0)
    dec = _stream("toy_a", vocabulary=_BosBytes(), model_family="decoder_only")
    inputs, targets = dec.tokenize(ex)
    assert inputs[0] == 2
    np.testing.assert_array_equal(inputs[1:], np.frombuffer(ex["inputs"].encode(), np.uint8) + 3)
    assert targets[-1] == 1 and 1 not in inputs.tolist()
    enc_inputs, _ = _stream("toy_a", vocabulary=_BosBytes()).tokenize(ex)
    assert enc_inputs[0] != 2 and enc_inputs[-1] == 1


def test_num_epochs_ends_a_finite_task_after_one_pass_with_a_padded_last_batch():
    TaskRegistry.add(PromptTask("toy_finite", 10, _toy("toy_finite").fn, "eval"), overwrite=True)
    batches = list(_stream("toy_finite", pack=False, batch_size=4, num_epochs=1))
    assert len(batches) == 3
    texts = [s[0] for b in batches for s in _segments_unpacked(b)]
    assert texts == [TaskRegistry.get("toy_finite").example(i, 0)["inputs"] for i in range(10)]
    assert not batches[-1]["encoder_input_tokens"][2:].any()


def test_stream_budgets_symbol_prompts_to_its_input_length_instead_of_failing():
    import symbol_tuning.tasks  # noqa: F401  (registers the embedded default)

    short = BatchStream("embedded_symbol_100", vocabulary=VOCAB, feature_lengths={"inputs": 512, "targets": 16},
                        batch_size=4, pack=False)
    long_ = BatchStream("embedded_symbol_100", vocabulary=VOCAB, feature_lengths={"inputs": 4096, "targets": 16},
                        batch_size=4, pack=False)
    short_lengths, long_lengths = [], []
    for _ in range(5):
        short_lengths += list((next(short)["encoder_input_tokens"] != 0).sum(axis=1))
        long_lengths += list((next(long_)["encoder_input_tokens"] != 0).sum(axis=1))
    assert max(short_lengths) <= 512  # inputs + EOS within the feature length
    assert max(long_lengths) > 512  # the same prompts are longer when the budget allows
    ex_short, ex_long = short.example_at(0), long_.example_at(0)
    query = ex_long["inputs"].rsplit("\n\n", 1)[-1]
    assert ex_short["inputs"].endswith(query)  # exemplars were dropped, the query is whole
    assert len(ex_short["inputs"].encode()) <= 511 < len(ex_long["inputs"].encode())

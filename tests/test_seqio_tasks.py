"""SeqIO registrations: names, and SeqIO datasets equal to our pipeline's tokenized examples."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import symbol_tuning.tasks  # noqa: F401
from symbol_tuning.data.embedded import datasets as generated
from symbol_tuning.data.pipeline import BatchStream
from symbol_tuning.data.task_registry import MixtureRegistry, TaskRegistry
from symbol_tuning.data.vocabularies import ByteVocabulary
from tasks import evaluation, tuning

LENGTHS = {"inputs": 2048, "targets": 512}


@pytest.fixture(scope="module")
def bridge():
    import seqio

    from symbol_tuning.data import seqio_bridge
    return seqio, seqio_bridge


def _ours(task_name, index, seed):
    stream = BatchStream(task_name, vocabulary=ByteVocabulary(), batch_size=1)
    return stream.tokenize(TaskRegistry.get(task_name).example(index, seed))


def test_every_paper_task_and_mixture_name_is_registered():
    names = set(TaskRegistry.names())
    assert len(tuning.task_names()) == 22 and set(tuning.task_names()) <= names
    assert {"symbol_tuning:rte", "eval:subj:neither", "eval:subj:flipped", "instructions:flan",
            "instructions:gen"} <= names
    assert len(evaluation.task_names()) >= 44 and set(evaluation.task_names()) <= names
    mixtures = set(MixtureRegistry.names())
    for rate in (0, 16, 33, 50, 66, 83, 100):
        assert {f"mix:symbol_{rate}", f"embedded_symbol_{rate}"} <= mixtures


def test_importing_tasks_reads_no_data_and_is_fast():
    code = textwrap.dedent("""
        import time
        import symbol_tuning.data.embedded.datasets
        import symbol_tuning.data.sources.hub as h, symbol_tuning.data.instruction_data as i
        import symbol_tuning.data.prompts, symbol_tuning.data.decontamination
        def boom(*a, **k):
            raise AssertionError("data read at import")
        h.load_classification = i.load_instruction_data = boom
        symbol_tuning.data.embedded.datasets.generated_classification = boom
        t = time.perf_counter()
        import symbol_tuning.tasks
        print(time.perf_counter() - t)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) < 1.0


def test_seqio_task_yields_our_tokens_for_the_same_seed_and_index(bridge):
    seqio, sb = bridge
    name = f"symbol_tuning:gen.{generated.TUNING_FAMILIES[0].name}"
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(sequence_length=LENGTHS, split="train", shuffle=False, seed=5)
    for i, ex in enumerate(ds.take(4).as_numpy_iterator()):
        inputs, targets = _ours(name, i, 5)
        np.testing.assert_array_equal(ex["inputs"], inputs)
        np.testing.assert_array_equal(ex["targets"], targets)


def test_seqio_shard_reads_every_nth_of_our_examples(bridge):
    seqio, sb = bridge
    name = "instructions:gen"
    ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=LENGTHS, split="train", shuffle=False,
                                                     shard_info=seqio.ShardInfo(index=1, num_shards=3))
    for j, ex in enumerate(ds.take(3).as_numpy_iterator()):
        np.testing.assert_array_equal(ex["inputs"], _ours(name, 1 + 3 * j, 0)[0])


def test_seqio_embedded_mixture_draws_each_task_in_our_index_order(bridge):
    # SeqIO samples tasks with its own RNG, so compare each task's subsequence with our indices 0, 1, ...
    seqio, _ = bridge
    mix = seqio.get_mixture_or_task("embedded_symbol_16")
    ds = mix.get_dataset(sequence_length=LENGTHS, split="train", shuffle=False, seed=0)
    symbol_names = [f"symbol_tuning:gen.{f.name}" for f in generated.TUNING_FAMILIES]
    counters = dict.fromkeys(symbol_names + ["instructions:gen"], 0)
    expected = {n: _ours(n, 0, 0) for n in counters}
    for ex in ds.take(12).as_numpy_iterator():
        hit = [n for n, (i, t) in expected.items()
               if np.array_equal(ex["inputs"], i) and np.array_equal(ex["targets"], t)]
        assert len(hit) == 1
        counters[hit[0]] += 1
        expected[hit[0]] = _ours(hit[0], counters[hit[0]], 0)
    assert counters["instructions:gen"] >= 6


def test_seqio_eval_task_has_one_row_per_option_and_rank_accuracy_scores_them(bridge):
    seqio, sb = bridge
    fam = next(f for f in generated.EVAL_FAMILIES if len(f.label_names) == 2)
    name = f"eval:gen.{fam.name}:instr_labels"
    ours = TaskRegistry.get(name).example(0, 0)
    task = seqio.get_mixture_or_task(name)
    rows = list(task.get_dataset(sequence_length=LENGTHS, split="validation", shuffle=False).take(2)
                .as_numpy_iterator())
    assert [r["targets_pretokenized"].decode() for r in rows] == list(ours["options"])
    assert [bool(r["is_correct"]) for r in rows] == [k == ours["answer"] for k in range(2)]
    targets = [task.postprocess_fn(None, example=r, is_target=True) for r in rows]
    assert targets == [(0, ours["answer"] == 0), (0, ours["answer"] == 1)]


def test_rank_classification_accuracy_matches_hand_count(bridge):
    _, sb = bridge
    targets = [(0, False), (0, True), (1, True), (1, False), (1, False), (2, False), (2, True)]
    scores = [-1.0, -0.5, -3.0, -1.0, -2.0, -0.1, -0.2]
    # example 0: option 1 best (correct); example 1: option 1 best (wrong); example 2: option 0 best (wrong)
    assert sb.rank_classification_accuracy(targets, scores)["accuracy"] == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="3 targets but 2 scores"):
        sb.rank_classification_accuracy(targets[:3], scores[:2])


def test_hf_tokenizer_adapter_tokenizes_in_tf_exactly_like_our_vocabulary(bridge, tmp_path):
    import tensorflow as tf
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from symbol_tuning.data.vocabularies import HFTokenizerVocabulary
    _, sb = bridge
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = ["Input: the movie was great\nOutput: 42", "Q: is it odd?\nA: yes", "Sentences: a b c\nMapped To: x"]
    tok.train_from_iterator(texts * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    vocab = HFTokenizerVocabulary(tmp_path / "tokenizer.json", eos_token="</s>")
    adapter = sb.seqio_vocabulary(vocab)
    for text in texts + ["unseen wörds here"]:
        ids = adapter.encode_tf(tf.constant(text)).numpy()
        np.testing.assert_array_equal(ids, vocab.encode_np(text))
        assert adapter.decode(ids.tolist()) == vocab.decode(ids.tolist())
    assert adapter.eos_id == vocab.eos_id


def test_register_mixture_appears_in_seqio_with_the_same_rates(bridge):
    seqio, sb = bridge
    from symbol_tuning.data.examples import ClassificationData, Example
    from symbol_tuning.data.task_builders import register_mixture
    data = ClassificationData("seqio_toy", "train", tuple(Example(f"text {i}", i % 2) for i in range(20)), ("a", "b"))
    register_mixture("seqio_toy_mix", datasets=[data], symbol_rate=0.25, instruction_task="instructions:gen",
                     overwrite=True, to_seqio=True)
    mix = seqio.get_mixture_or_task("seqio_toy_mix")
    rates = {t.name: mix.get_rate(t) for t in mix.tasks}
    assert rates == pytest.approx({"symbol_tuning:seqio_toy": 0.25, "instructions:gen": 0.75})

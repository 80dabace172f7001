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
        import symbol_tuning.data.embedded.lexicons as lex
        lex.lexicon_classification = lex.lexicon_instruction_data = lex.reproduction_pools = boom
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


def _prompted_names(root):
    """Every registered task whose prompt we build, but the paper's tuning datasets not staged in `root`."""
    from symbol_tuning.data.sources.layouts import local_source

    def staged(dataset):
        try:
            local_source(dataset, str(root), "train")
            return True
        except (FileNotFoundError, KeyError):
            return False
    paper_tuning = set(tuning.task_names())
    return [n for n in TaskRegistry.names() if TaskRegistry.get(n).kind in ("symbol", "eval")
            and (n not in paper_tuning or staged(n.split(":", 1)[1]))]


@pytest.fixture(scope="module")
def local_paper_data(shared_data):
    from symbol_tuning.tasks import local
    local.use_local_files(str(shared_data))
    yield shared_data
    local.use_local_files(None)


@pytest.mark.parametrize("length", [512, 2048])
def test_seqio_trimming_never_cuts_the_query_of_any_bridged_task(bridge, local_paper_data, length, monkeypatch):
    # Every task whose prompt we build (generated and the paper's, read from local files), at the asked
    # input length: SeqIO's output is our prompt for that budget + EOS, untrimmed, so the query is whole.
    seqio, _ = bridge
    import tensorflow as tf

    from symbol_tuning.data.decontamination import ContaminationError
    from symbol_tuning.data.prompts import PromptTooLongError
    from symbol_tuning.data.sources import hub
    monkeypatch.setattr(hub, "load_classification", lambda name, *a, **k: pytest.fail(f"hub asked for {name}"))
    from symbol_tuning.data.task_registry import PromptBudget
    vocab = ByteVocabulary()
    budget = PromptBudget(max_input_length=length - 1, length_fn=lambda text: len(vocab.encode_np(text)))
    names = _prompted_names(local_paper_data)
    assert len(names) >= 140 and {"symbol_tuning:rte", "eval:subj:neither", "eval:subj:flipped"} <= set(names)
    over_without_budget = refused = 0
    for name in names:
        ours = TaskRegistry.get(name)
        split = "validation" if ours.kind == "eval" else "train"
        ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length={"inputs": length, "targets": 64},
                                                          split=split, shuffle=False, seed=3)
        expected = []
        for i in range(2 if ours.kind == "symbol" else 1):
            try:
                expected.append(ours.example(i, 3, budget))
            except PromptTooLongError:  # no prompt with the fewest exemplars fits: refused, never cut
                expected.append(None)
            except ContaminationError:  # a local tuning copy sharing texts with an eval set is refused
                break
        rows = ds.as_numpy_iterator()
        for i, exp in enumerate(expected):
            if exp is None:
                with pytest.raises(tf.errors.OpError, match=f"PromptTooLongError.*over max_input_length={length - 1}"):
                    next(rows)
                refused += 1
                break
            for _ in range(1 if ours.kind == "symbol" else len(exp["options"])):
                ex = next(rows)
                text = ex["inputs_pretokenized"].decode("utf-8")
                assert text == exp["inputs"] and (ours.kind == "symbol" or int(ex["idx"]) == i), name
                np.testing.assert_array_equal(ex["inputs"], np.append(vocab.encode_np(text), vocab.eos_id))
                assert len(ex["inputs"]) <= length, name
            over_without_budget += len(vocab.encode_np(ours.example(i, 3)["inputs"])) + 1 > length
    assert refused < len(names) // (4 if length == 512 else 20), refused  # long real texts at 512 bytes
    if length == 512:  # the budget matters: SeqIO's trimming would have cut these prompts' queries
        assert over_without_budget > 10


def test_seqio_validation_split_is_the_sources_held_out_data_not_train(bridge):
    seqio, _ = bridge
    name = f"symbol_tuning:gen.{generated.TUNING_FAMILIES[0].name}"
    task = seqio.get_mixture_or_task(name)
    assert task.splits == ("train", "validation")

    def queries(split):
        ds = task.get_dataset(sequence_length={"inputs": 2048, "targets": 64}, split=split, shuffle=False)
        return {ex["inputs_pretokenized"].decode().rsplit("\n\n", 1)[-1] for ex in ds.take(20).as_numpy_iterator()}
    held_out = {ex.text for ex in generated.generated_classification(generated.TUNING_FAMILIES[0].name,
                                                                     split="eval", num_examples=100).examples}
    val, train = queries("validation"), queries("train")
    assert all(any(q.startswith(f"X = {t}") or t in q for t in held_out) for q in val)
    assert not val & train
    assert seqio.get_mixture_or_task("eval:subj:neither").splits == ("validation",)
    assert seqio.get_mixture_or_task("instructions:gen").splits == ("train",)


def test_paper_eval_task_reads_local_files_without_the_hub(bridge, local_paper_data, monkeypatch):
    seqio, _ = bridge
    from symbol_tuning.data.sources import hub
    from symbol_tuning.data.sources.layouts import local_source
    from symbol_tuning.data.sources.local_files import load_local

    monkeypatch.setattr(hub, "load_classification", lambda *a, **k: pytest.fail("the hub was asked"))
    queries = load_local(source=local_source("subj", str(local_paper_data), "eval"), split="eval", max_examples=100)
    task = seqio.get_mixture_or_task("eval:subj:instr_labels")
    rows = list(task.get_dataset(sequence_length={"inputs": 1024, "targets": 16}, split="validation",
                                 shuffle=False).take(2).as_numpy_iterator())
    assert queries.examples[0].text in rows[0]["inputs_pretokenized"].decode()
    assert rows[0]["idx"] == rows[1]["idx"] == 0


def test_names_are_identical_in_both_registries(bridge):
    seqio, _ = bridge
    ours = set(TaskRegistry.names()) | set(MixtureRegistry.names())
    assert ours <= set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    from symbol_tuning.data.task_registry import PromptTask
    with pytest.raises(ValueError, match=r"bad: /"):
        PromptTask("symbol_tuning:gen/x", 1, lambda i, s, b: {})


def test_in_memory_data_named_like_a_paper_dataset_is_refused_naming_both(bridge):
    from symbol_tuning.data.examples import ClassificationData, Example
    from symbol_tuning.data.task_builders import register_mixture
    mine = ClassificationData("trec", "train", tuple(Example(f"my question {i}", i % 2) for i in range(8)), ("a", "b"))
    with pytest.raises(ValueError, match=r"in-memory dataset 'trec' \(8 examples\).*'symbol_tuning:trec'.*"
                                         r"the paper's dataset 'trec'"):
        register_mixture("my_trec_mix", datasets=[mine], symbol_rate=1.0, instruction_task=None)
    original = TaskRegistry.get("symbol_tuning:trec")
    try:
        register_mixture("my_trec_mix", datasets=[mine], symbol_rate=1.0, instruction_task=None, overwrite=True)
        assert "my question" in TaskRegistry.get("symbol_tuning:trec").example(0, 0)["inputs"]
    finally:
        TaskRegistry.add(original, overwrite=True)
        MixtureRegistry.remove("my_trec_mix")


def test_registering_over_a_users_seqio_task_is_refused_unless_overwrite(bridge):
    seqio, _ = bridge
    from symbol_tuning.data.examples import GenerativeData, TextPair
    from symbol_tuning.data.task_builders import instruction_task
    seqio.TaskRegistry.add("users_own_task", source=seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None: None, splits=("train",)), output_features={})
    data = GenerativeData("d", "train", (TextPair("q", "a"),), task_type="instruction")
    task = instruction_task("users_own_task", lambda: data, num_examples=1)
    with pytest.raises(ValueError, match=r"'users_own_task' is already a SeqIO task registered outside"):
        TaskRegistry.add(task)
    assert "users_own_task" not in TaskRegistry.names()
    TaskRegistry.add(task, overwrite=True)
    assert seqio.get_mixture_or_task("users_own_task").splits == ("train",)
    TaskRegistry.remove("users_own_task")


def _register_users_seqio_task(seqio, name, n):
    import tensorflow as tf
    vocab = seqio.ByteVocabulary()
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
            {"inputs": [f"question {i}" for i in range(n)], "targets": [f"answer {i}" for i in range(n)]}),
        splits=("train",)), preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)})


def test_plain_seqio_mixture_over_our_tasks_and_a_users_task_streams_at_seqios_rates(bridge):
    seqio, sb = bridge
    _register_users_seqio_task(seqio, "users_qa", 5)
    seqio.MixtureRegistry.remove("users_mix")
    seqio.MixtureRegistry.add("users_mix", [("embedded_symbol_16", 3.0), ("users_qa", 1.0)])
    assert sb.adopt("users_mix") == "users_mix"
    stream = BatchStream("users_mix", vocabulary=ByteVocabulary(), batch_size=2,
                         feature_lengths={"inputs": 512, "targets": 32})
    theirs = seqio.get_mixture_or_task("users_mix")
    total = sum(theirs.get_rate(t) for t in theirs.tasks)
    expected = {t.name: theirs.get_rate(t) / total for t in theirs.tasks}
    assert dict(zip([t.name for t in stream.sampler.tasks], stream.sampler.probs)) == pytest.approx(expected)
    assert expected["users_qa"] == pytest.approx(0.25) and expected["instructions:gen"] == pytest.approx(0.75 * 0.84)
    # the user's task: its examples in order, wrapping after its 5 (texts re-tokenized by our stream)
    qa = [stream.example_at(p) for p in range(400) if stream.sampler.locate(p)[0].name == "users_qa"]
    assert [ex["inputs"] for ex in qa[:7]] == [f"question {i % 5}" for i in range(7)]
    assert qa[0]["targets"] == "answer 0"
    batch = next(iter(stream))
    assert batch["encoder_input_tokens"].shape == (2, 512)
    assert seqio.get_mixture_or_task("users_mix") is theirs  # the user's SeqIO entry is left as it was

"""The embedded reproduction's data can show an effect: every held-out family is solvable from its exemplars
(a 1-nearest-neighbour learner on the shown exemplars, computed here, scores >= 90% in `neither`), every
prompt is made of words of the WordLevel vocabulary (no <unk>), each symbol is one token, and the
evaluation symbols occur as inputs in symbol tuning but never as a label there."""
import numpy as np
import pytest

import symbol_tuning.tasks  # noqa: F401 -- registers the reproduction's tasks
from symbol_tuning.data.embedded import lexicons
from symbol_tuning.data.symbols import KINDS
from symbol_tuning.data.task_registry import TaskRegistry
from symbol_tuning.data.vocabularies import HFTokenizerVocabulary, write_word_level_tokenizer
from symbol_tuning.evaluation.evaluator import EVAL_SETTINGS, build_dataset_prompts
from symbol_tuning.evaluation.suites import build_suite
from tasks import reproduction


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
    path = write_word_level_tokenizer(lexicons.vocabulary_words(), tmp_path_factory.mktemp("vocab"))
    return HFTokenizerVocabulary(path)


def _nearest_neighbour(prompt, dataset):
    query = set(dataset.queries.examples[prompt.index].text.split())
    shown = [(dataset.exemplars.examples[i], label) for i, label in zip(prompt.exemplar_indices,
                                                                         prompt.exemplar_labels)]
    best = max(shown, key=lambda pair: len(query & set(pair[0].text.split())))  # ties: first shown
    return best[1]


def test_every_held_out_family_is_solvable_from_its_exemplars_by_nearest_neighbour(vocabulary):
    suite = build_suite("reproduction", max_queries=100, seed=0)
    assert len(suite.datasets) == len(lexicons.EVAL_FAMILIES)
    for dataset in suite.datasets:
        prompts = build_dataset_prompts(dataset, "neither", seed=0, k_per_class=4, max_input_length=128,
                                        length_fn=lambda text: len(vocabulary.encode(text)))
        assert all(p.num_exemplars == 4 * dataset.num_classes for p in prompts)  # k = 4 per class always kept
        ceiling = np.mean([_nearest_neighbour(p, dataset) == p.answer for p in prompts])
        assert ceiling >= 0.9, (dataset.name, ceiling)


def test_held_out_families_have_priors_and_stay_out_of_symbol_tuning():
    natural = {f.name for f in lexicons.EVAL_FAMILIES}
    assert all(f.instruction and f.num_classes == 2 for f in lexicons.EVAL_FAMILIES)  # flipped applies to all
    instruction_families = {f.name for f in lexicons.NATURAL_FAMILIES}
    assert natural <= instruction_families  # the baseline learns their instructions and label words
    tuned = {f.name for f in lexicons.synthetic_families()}
    assert not natural & tuned
    eval_markers = {m for f in lexicons.EVAL_FAMILIES for ms in f.markers for m in ms}
    tuned_markers = {m for f in lexicons.synthetic_families() for ms in f.markers for m in ms}
    assert not eval_markers & tuned_markers


def test_every_reproduction_prompt_is_in_the_word_level_vocabulary_and_symbols_are_single_tokens(vocabulary):
    unk = vocabulary._tok.token_to_id("<unk>")
    texts = []
    for name in reproduction.symbol_task_names()[:12] + [reproduction.INSTRUCTION_TASK]:
        task = TaskRegistry.get(name)
        for i in range(40):
            row = task.fn(i, 0, None)
            texts += [row["inputs"], row["targets"]]
    suite = build_suite("reproduction", max_queries=20, seed=0)
    for dataset in suite.datasets:
        for setting in EVAL_SETTINGS:
            for p in build_dataset_prompts(dataset, setting, seed=0, k_per_class=4, max_input_length=128,
                                           length_fn=lambda text: len(vocabulary.encode(text))):
                texts += [p.inputs, *p.options]
    for text in texts:
        assert unk not in vocabulary.encode(text), text
    pools = lexicons.reproduction_pools()
    for pool in (pools.tuning, pools.evaluation):
        assert set(pool) == set(KINDS)
        for kind in KINDS:
            for symbol in pool[kind]:
                assert len(vocabulary.encode(" " + symbol)) == 1, symbol


def test_evaluation_symbols_are_seen_as_inputs_in_symbol_tuning_but_never_as_labels():
    evaluation = {s for kind in KINDS for s in lexicons.reproduction_pools().evaluation[kind]}
    seen_as_input, targets = set(), set()
    for name in reproduction.symbol_task_names():
        task = TaskRegistry.get(name)
        for i in range(20):
            row = task.fn(i, 0, None)
            seen_as_input |= set(row["inputs"].split()) & evaluation
            targets |= {o.strip() for o in row["options"]}
    assert len(seen_as_input) >= len(evaluation) // 2
    assert not targets & evaluation


def test_word_level_tokenizer_refuses_a_word_that_clashes_with_a_special_token(tmp_path):
    with pytest.raises(ValueError, match="special tokens"):
        write_word_level_tokenizer(["cat", "</s>"], tmp_path)
    path = write_word_level_tokenizer(["cat", "dog", ":"], tmp_path)
    vocab = HFTokenizerVocabulary(path)
    assert vocab.eos_id == 1 and vocab.pad_id == 0 and vocab.encode("dog: cat") == [4, 5, 3]

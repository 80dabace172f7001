"""Generated task families: counts, balance, determinism, split and family disjointness, and that
each family's label is recoverable from its text by an independent rule or a numpy Naive Bayes."""
import collections
import hashlib
import re
import time

import numpy as np
import pytest

from symbol_tuning.data.embedded import datasets as G
from symbol_tuning.data.examples import ClassificationData, GenerativeData, texts_of

ALL = G.TUNING_FAMILIES + G.EVAL_FAMILIES
PAPER_TUNING_TYPES = ("nli", "sentiment", "paraphrase", "commonsense", "topic", "coreference", "misc")


def _ints(text):
    return [int(x) for x in re.findall(r"\d+", text)]


def _quoted(text):
    return re.search(r"'([a-z]+)'", text).group(1)


_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                 "sixteen seventeen eighteen nineteen twenty").split()
_SIZE_RANK = {w: i for i, w in enumerate(
    "ant bee mouse apple cat dog bicycle horse car elephant bus house whale ship mountain".split())}
_FEMALE = set("Mary Anna Emma Sara Julia Lucy Olivia Nora Alice Grace Maya Rosa".split())
_SAME_MEANING = [{"big", "large"}, {"small", "tiny"}, {"fast", "quick"}, {"happy", "glad"}, {"smart", "clever"},
                 {"angry", "mad"}, {"rich", "wealthy"}, {"sick", "ill"}, {"difficult", "hard"}, {"quiet", "silent"}]
_IRREGULAR_PAST = {"wrote", "sang", "swam", "ate", "slept"}


def _first_last(text):
    a, b = re.search(r"compare the (\w+) with the (\w+)", text).groups()
    return _SIZE_RANK[a] > _SIZE_RANK[b]


def _sum_holds(text, sign):
    a, b, c = _ints(text.split(":", 1)[1])
    return a + sign * b == c


# The families' documented rules, re-implemented from their instructions: text -> natural label.
RULES = {
    "number_parity": lambda t: "even" if _ints(t)[0] % 2 == 0 else "odd",
    "above_fifty": lambda t: "above" if _ints(t)[0] > 50 else "below",
    "larger_number": lambda t: "first" if _ints(t)[0] > _ints(t)[1] else "second",
    "addition_check": lambda t: "correct" if _sum_holds(t, 1) else "incorrect",
    "subtraction_check": lambda t: "true" if _sum_holds(t, -1) else "false",
    "quantity_entailment": lambda t: "yes" if _ints(t)[0] > _ints(t)[1] else "no",
    "color_entailment": lambda t: "entailment" if re.search(r"\d is (\w+)\.", t).group(1)
    == re.search(r"Hypothesis: The \w+ is (\w+)\.", t).group(1) else "contradiction",
    "number_word_paraphrase": lambda t: "same" if _ints(t)[0] == _NUMBER_WORDS.index(
        re.search(r"Second: \w+ has (\w+)", t).group(1)) else "different",
    "synonym_paraphrase": lambda t: "same" if set(re.findall(r"is very (\w+) on", t)) in _SAME_MEANING
    else "different",
    "sentence_length": lambda t: "long" if len(t.split()) > 7 else "short",
    "starts_with_vowel": lambda t: "vowel" if _quoted(t)[0] in "aeiou" else "consonant",
    "long_word": lambda t: "yes" if len(_quoted(t)) > 6 else "no",
    "capitalized_word": lambda t: "yes" if any(w.strip(".").isupper() for w in t.split()) else "no",
    "question_or_statement": lambda t: "question" if t.endswith("?") else "statement",
    "singular_or_plural": lambda t: "plural" if re.search(r"\b(are|were|have been)\b", t) else "singular",
    "verb_tense": lambda t: "past" if t.split()[1].endswith("ed") or t.split()[1] in _IRREGULAR_PAST else "present",
    "increasing_order": lambda t: "yes" if _ints(t) == sorted(_ints(t)) else "no",
    "repeated_word": lambda t: "yes" if len(set(t.split()[1:])) < len(t.split()[1:]) else "no",
    "parcel_weight": lambda t: "light" if _ints(t)[1] < 500 else "heavy",
    "alphabetical_order": lambda t: "yes" if t.split(": ")[1].split(" / ")[0] < t.split(" / ")[1] else "no",
    "bigger_object": lambda t: "first" if _first_last(t) else "second",
    "pronoun_reference": lambda t: "first" if (t.split()[0] in _FEMALE) == (" she " in t) else "second",
}


def _features(text):
    toks = re.findall(r"[a-z]+|\d+|[^\sa-z\d]", text.lower())
    return toks + [f"{a}_{b}" for a, b in zip(toks, toks[1:])]


def _naive_bayes_accuracy(train: ClassificationData, test: ClassificationData) -> float:
    """Multinomial Naive Bayes on word unigrams + bigrams, written in plain numpy."""
    vocab = {f: i for i, f in enumerate(sorted({f for ex in train.examples for f in _features(ex.text)}))}
    counts = np.ones((train.num_classes, len(vocab) + 1))
    for ex in train.examples:
        for f in _features(ex.text):
            counts[ex.label, vocab[f]] += 1
    log_p = np.log(counts / counts.sum(1, keepdims=True))
    right = 0
    for ex in test.examples:
        idx = [vocab.get(f, len(vocab)) for f in _features(ex.text)]
        right += int(np.argmax(log_p[:, idx].sum(1)) == ex.label)
    return right / len(test.examples)


def test_at_least_30_families_22_tuning_8_eval_with_instructions_and_2_to_4_natural_labels():
    assert len(ALL) >= 30 and len(G.TUNING_FAMILIES) >= 22 and len(G.EVAL_FAMILIES) >= 8
    assert len({f.name for f in ALL}) == len(ALL) and len({f.instruction for f in ALL}) == len(ALL)
    for fam in ALL:
        assert 2 <= len(fam.label_names) <= 4 and len(set(fam.label_names)) == len(fam.label_names), fam
        assert all(re.fullmatch(r"[a-z][a-z ]*", name) for name in fam.label_names), fam
        assert len(fam.instruction) > 15 and fam.instruction[-1] in "?.", fam
    assert sum(f.num_classes == 2 for f in G.EVAL_FAMILIES) >= 4
    assert {f.task_type for f in G.TUNING_FAMILIES} == set(PAPER_TUNING_TYPES)


def test_eval_families_share_no_name_instruction_or_text_with_tuning_families():
    assert not {f.name for f in G.TUNING_FAMILIES} & {f.name for f in G.EVAL_FAMILIES}
    assert not {f.instruction for f in G.TUNING_FAMILIES} & {f.instruction for f in G.EVAL_FAMILIES}

    def hashes(families):
        data = [G.generated_classification(f, split=s, num_examples=150) for f in families for s in G.SPLITS]
        return {hashlib.sha256(t.encode()).hexdigest() for t in texts_of(data)}

    assert not hashes(G.TUNING_FAMILIES) & hashes(G.EVAL_FAMILIES)


@pytest.mark.parametrize("split", G.SPLITS)
def test_labels_are_balanced_and_short_texts_are_mostly_unique(split):
    for fam in ALL:
        data = G.generated_classification(fam, split=split, num_examples=121, seed=3)
        counts = collections.Counter(ex.label for ex in data.examples)
        assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == fam.num_classes, (fam.name, counts)
        texts = [ex.text for ex in data.examples]
        assert all(15 <= len(t) <= 120 for t in texts), (fam.name, min(texts, key=len), max(texts, key=len))
        assert len(set(texts)) >= 0.9 * len(texts), fam.name


def test_same_seed_gives_identical_data_and_examples_are_pure_functions_of_index():
    for fam in ("movie_sentiment", "season", "parcel_weight"):
        a = G.generated_classification(fam, split="train", num_examples=40, seed=7)
        assert a == G.generated_classification(fam, split="train", num_examples=40, seed=7)
        assert a.examples[:10] == G.generated_classification(fam, split="train", num_examples=10, seed=7).examples
        assert a.examples[33] == G.generate_example(fam, split="train", seed=7, index=33)
        other = G.generated_classification(fam, split="train", num_examples=40, seed=8)
        assert [e.text for e in a.examples] != [e.text for e in other.examples]
        assert a.name == f"gen/{fam}" and a.instruction == G.get_family(fam).instruction


def test_train_and_eval_splits_of_every_family_share_no_text():
    for fam in ALL:
        train = {e.text for e in G.generated_classification(fam, split="train", num_examples=300).examples}
        evals = {e.text for e in G.generated_classification(fam, split="eval", num_examples=300).examples}
        assert not train & evals, (fam.name, sorted(train & evals)[:3])


def test_every_family_label_is_recovered_by_its_rule_or_a_numpy_naive_bayes():
    lexical = [f for f in ALL if f.name not in RULES]
    assert set(RULES) <= {f.name for f in ALL}
    for fam in ALL:
        train = G.generated_classification(fam, split="train", num_examples=600, seed=1)
        test = G.generated_classification(fam, split="eval", num_examples=120, seed=1)
        majority = max(collections.Counter(e.label for e in test.examples).values()) / len(test.examples)
        assert majority <= 0.55, fam.name
        if fam.name in RULES:
            wrong = [e.text for e in train.examples + test.examples
                     if RULES[fam.name](e.text) != fam.label_names[e.label]]
            assert not wrong, (fam.name, wrong[:3])
        else:
            assert _naive_bayes_accuracy(train, test) >= 0.95, fam.name
    assert len(lexical) >= 10


def test_naive_bayes_cannot_solve_shuffled_labels_so_the_recoverability_check_can_fail():
    train = G.generated_classification("movie_sentiment", split="train", num_examples=200, seed=1)
    test = G.generated_classification("movie_sentiment", split="eval", num_examples=200, seed=1)
    rng = np.random.default_rng(0)
    shuffled = ClassificationData(train.name, train.split, tuple(
        type(e)(e.text, int(rng.integers(2))) for e in train.examples), train.label_names)
    assert _naive_bayes_accuracy(shuffled, test) < 0.7


def test_generation_runs_at_thousands_of_examples_per_second():
    t0 = time.perf_counter()
    n = 0
    for fam in ALL[::4]:
        n += len(G.generated_classification(fam, split="train", num_examples=300).examples)
        n += len(G.generated_classification(fam, split="eval", num_examples=100).examples)
    rate = n / (time.perf_counter() - t0)
    assert rate > 1000, rate


def test_instruction_data_pairs_tuning_instructions_with_correct_natural_labels():
    data = G.generated_instruction_data(seed=2, num_examples=300)
    assert isinstance(data, GenerativeData) and len(data.examples) == 300
    assert data == G.generated_instruction_data(seed=2, num_examples=300)
    by_instruction = {f.instruction: f for f in G.TUNING_FAMILIES}
    eval_instructions = {f.instruction for f in G.EVAL_FAMILIES}
    styles = collections.Counter()
    checked = 0
    for pair in data.examples:
        instruction, *blocks = pair.inputs.split("\n\n")
        fam = by_instruction[instruction]
        assert pair.targets in fam.label_names and instruction not in eval_instructions
        if blocks[-1].startswith("OPTIONS:"):
            assert blocks.pop() == "OPTIONS:\n" + "\n".join(f"- {n}" for n in fam.label_names)
            styles["options"] += 1
        shots = [b.rsplit("\nAnswer: ", 1) for b in blocks[:-1]]
        styles["few-shot" if shots else "zero-shot"] += 1
        query = blocks[-1].removesuffix("\nAnswer:")
        if fam.name in RULES:
            assert RULES[fam.name](query) == pair.targets, pair
            assert all(RULES[fam.name](text) == label for text, label in shots), pair
            checked += 1
    assert min(styles.values()) >= 50 and checked >= 100, styles
    assert {by_instruction[p.inputs.split("\n\n")[0]].name for p in data.examples} == {
        f.name for f in G.TUNING_FAMILIES}


def test_bad_family_split_seed_and_count_raise_clear_errors():
    with pytest.raises(KeyError, match="no_such_family.*movie_sentiment"):
        G.get_family("no_such_family")
    with pytest.raises(ValueError, match="movie_sentiment.*split 'test'"):
        G.generated_classification("movie_sentiment", split="test", num_examples=3)
    with pytest.raises(ValueError, match="seed"):
        G.generated_classification("movie_sentiment", split="train", num_examples=3, seed=-1)
    with pytest.raises(ValueError, match="num_examples"):
        G.generated_classification("movie_sentiment", split="train", num_examples=-2)
    with pytest.raises(ValueError, match="families is empty"):
        G.generated_instruction_data(num_examples=3, families=())

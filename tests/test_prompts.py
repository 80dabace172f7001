"""Prompt builders and formats: structure parsed back from the text, settings, determinism, budget."""
import collections
import hashlib
import inspect
import subprocess
import sys

import pytest

from symbol_tuning.data.examples import ClassificationData, Example, GenerativeData, TextPair
from symbol_tuning.data.formats import FORMAT_NAMES, get_format
from symbol_tuning.data.prompts import (
    SETTINGS,
    PromptTooLongError,
    build_eval_prompt,
    build_generative_prompt,
    build_tuning_prompt,
    utf8_length,
)
from symbol_tuning.data.symbols import get_pools

# (input prefix, text/label joiner + output prefix + space) written by hand, independent of formats.py.
HAND_FORMATS = {
    "Input:/Output:": ("Input: ", "\nOutput: "),
    "Input:/Target:": ("Input: ", "\nTarget: "),
    "Input:/Symbol:": ("Input: ", "\nSymbol: "),
    "Input:/Label:": ("Input: ", "\nLabel: "),
    "Question:/Answer:": ("Question: ", "\nAnswer: "),
    "Student:/Teacher:": ("Student: ", "\nTeacher: "),
    "X = /Y = ": ("X = ", "\nY = "),
    "Q:/A:": ("Q: ", "\nA: "),
    "{x} -> {y}": ("", " -> "),
    "Sentences:/Mapped To:": ("Sentences: ", "\nMapped To: "),
}
INSTRUCTION = "Decide which topic the following sentence is about."


def make_data(name, per_class, num_classes=3, instruction=None, split="train"):
    """A tiny classification split with unique texts that name their example index."""
    examples = tuple(Example(f"{name} {split} sentence {i} on topic {i % num_classes}", i % num_classes)
                     for i in range(per_class * num_classes))
    labels = ("sports", "world news", "science")[:num_classes]
    return ClassificationData(name, split, examples, labels, instruction=instruction)


def parse(prompt, instruction=None):
    """Split a prompt into (instruction or None, [(exemplar text, label text)], query text), by hand."""
    prefix, middle = HAND_FORMATS[prompt.format_name]
    blocks = prompt.inputs.split("\n\n")
    header = None
    if instruction is not None and prompt.inputs.startswith(instruction + "\n\n"):
        header, blocks = blocks[0], blocks[1:]
    exemplars = []
    for block in blocks[:-1]:
        assert block.startswith(prefix), block
        text, label = block[len(prefix):].rsplit(middle, 1)
        exemplars.append((text, label))
    query = blocks[-1]
    assert query.startswith(prefix) and query.endswith(middle.rstrip(" ")), query
    return header, exemplars, query[len(prefix):-len(middle.rstrip(" "))]


def test_formats_render_exemplars_and_queries_as_written_by_hand():
    assert set(FORMAT_NAMES) == set(HAND_FORMATS)
    assert get_format("Input:/Output:").exemplar("nice film", "positive") == "Input: nice film\nOutput: positive"
    assert get_format("Input:/Output:").query("nice film") == "Input: nice film\nOutput:"
    assert get_format("{x} -> {y}").exemplar("a b", "7") == "a b -> 7"
    assert get_format("{x} -> {y}").query("a b") == "a b ->"
    assert get_format("X = /Y = ").query("q") == "X = q\nY ="
    assert get_format("Sentences:/Mapped To:").target("EQX") == " EQX"
    with pytest.raises(ValueError, match="'Foo:'"):
        get_format("Foo:")


def test_tuning_prompt_shows_2_to_10_exemplars_of_every_class_with_one_symbol_each():
    data = make_data("topics", per_class=20)
    text_label = {ex.text: ex.label for ex in data.examples}
    for index in range(60):
        prompt = build_tuning_prompt(data, seed=3, index=index)
        _, exemplars, query = parse(prompt)
        symbol_of = {}
        for text, symbol in exemplars:
            assert symbol_of.setdefault(text_label[text], symbol) == symbol
        assert sorted(symbol_of) == [0, 1, 2]
        assert tuple(" " + symbol_of[c] for c in range(3)) == prompt.options
        counts = collections.Counter(text_label[text] for text, _ in exemplars)
        assert all(2 <= counts[c] <= 10 for c in range(3)), counts
        assert counts == collections.Counter(prompt.exemplar_labels)
        assert query == data.examples[prompt.query_index].text
        assert query not in [text for text, _ in exemplars]
        assert prompt.targets == prompt.options[text_label[query]] == prompt.options[prompt.answer]
        assert prompt.num_exemplars == len(exemplars) and prompt.setting == "symbol_tuning"


def test_tuning_prompt_never_contains_the_instruction():
    data = make_data("topics", per_class=15, instruction=INSTRUCTION)
    for index in range(40):
        prompt = build_tuning_prompt(data, seed=0, index=index)
        assert INSTRUCTION not in prompt.inputs
        assert prompt.inputs.startswith(HAND_FORMATS[prompt.format_name][0] + "topics train sentence")


def test_tuning_symbols_come_from_the_tuning_pool_and_every_kind_and_format_appears():
    pools = get_pools()
    kind_of = {s: k for k, symbols in pools.tuning.items() for s in symbols}
    data = make_data("topics", per_class=12)
    kinds, formats = collections.Counter(), collections.Counter()
    for index in range(300):
        prompt = build_tuning_prompt(data, seed=1, index=index)
        kinds.update(kind_of[option[1:]] for option in prompt.options)
        formats[prompt.format_name] += 1
    assert set(kinds) == {"integer", "letters", "word"}
    assert set(formats) == set(HAND_FORMATS)


def test_tuning_indices_visit_every_example_once_per_pass():
    data = make_data("topics", per_class=10)
    n = len(data.examples)
    queries = [build_tuning_prompt(data, seed=4, index=i).query_index for i in range(n)]
    assert sorted(queries) == list(range(n))
    assert queries != list(range(n))
    assert build_tuning_prompt(data, seed=4, index=n + 5).query_index == queries[5]
    assert [build_tuning_prompt(data, seed=5, index=i).query_index for i in range(n)] != queries


def test_tuning_class_with_few_examples_uses_all_and_one_with_none_raises():
    examples = tuple(Example(f"a{i}", 0) for i in range(12)) + (Example("b0", 1), Example("b1", 1))
    data = ClassificationData("tiny", "train", examples, ("x", "y"))
    seen = set()
    for index in range(len(examples)):
        prompt = build_tuning_prompt(data, seed=0, index=index)
        query_is_b = data.examples[prompt.query_index].label == 1
        seen.add(query_is_b)
        assert collections.Counter(prompt.exemplar_labels)[1] == (1 if query_is_b else 2)
        assert prompt.short_classes == ((1,) if query_is_b else ())
    assert seen == {True, False}
    lonely = ClassificationData("lonely", "train", examples[:12] + (Example("b0", 1),), ("x", "y"))
    failures = []
    for i in range(13):
        try:
            build_tuning_prompt(lonely, seed=0, index=i)
        except ValueError as err:
            failures.append(str(err))
    assert len(failures) == 1 and "'lonely'" in failures[0] and "class 1" in failures[0]


@pytest.mark.parametrize("setting", SETTINGS)
def test_eval_prompt_labels_instruction_and_k_exemplars_follow_the_setting(setting):
    train = make_data("evalset", per_class=10, instruction=INSTRUCTION)
    queries = make_data("evalset", per_class=4, instruction=INSTRUCTION, split="eval")
    train_label = {ex.text: ex.label for ex in train.examples}
    evaluation = {s for symbols in get_pools().evaluation.values() for s in symbols}
    for index in range(len(queries.examples)):
        prompt = build_eval_prompt(queries, train, setting=setting, seed=2, index=index, k_per_class=4)
        header, exemplars, query = parse(prompt, INSTRUCTION)
        assert (header == INSTRUCTION) == setting.startswith("instr")
        assert (INSTRUCTION in prompt.inputs) == setting.startswith("instr")
        assert query == queries.examples[index].text
        assert collections.Counter(train_label[t] for t, _ in exemplars) == {0: 4, 1: 4, 2: 4}
        labels = [" " + label for _, label in exemplars]
        assert all(label == prompt.options[train_label[t]] for (t, _), label in zip(exemplars, labels))
        if setting in ("instr_labels", "labels_only"):
            assert prompt.options == (" sports", " world news", " science")
        else:
            assert all(option[1:] in evaluation for option in prompt.options)
        assert prompt.answer == queries.examples[index].label and prompt.setting == setting


def test_eval_settings_share_exemplars_and_format_for_one_index():
    train = make_data("evalset", per_class=10, instruction=INSTRUCTION)
    queries = make_data("evalset", per_class=4, instruction=INSTRUCTION, split="eval")
    for index in range(5):
        built = [build_eval_prompt(queries, train, setting=s, seed=9, index=index) for s in SETTINGS]
        assert len({(p.exemplar_indices, p.format_name) for p in built}) == 1


def test_flipped_labels_swap_every_exemplar_and_the_answer():
    train = make_data("binary", per_class=8, num_classes=2, instruction=INSTRUCTION)
    queries = make_data("binary", per_class=3, num_classes=2, instruction=INSTRUCTION, split="eval")
    names = train.label_names
    train_label = {ex.text: ex.label for ex in train.examples}
    for index in range(len(queries.examples)):
        prompt = build_eval_prompt(queries, train, setting="labels_only", seed=0, index=index, flipped=True)
        _, exemplars, _ = parse(prompt)
        assert all(label == names[1 - train_label[text]] for text, label in exemplars)
        true = queries.examples[index].label
        assert prompt.answer == 1 - true and prompt.targets == " " + names[1 - true] and prompt.flipped
        symbolic = build_eval_prompt(queries, train, setting="neither", seed=0, index=index, flipped=True)
        _, exemplars, _ = parse(symbolic)
        assert all(" " + label == symbolic.options[1 - train_label[text]] for text, label in exemplars)
        assert symbolic.answer == 1 - true
    with pytest.raises(ValueError, match=r"'evalset'.*binary"):
        build_eval_prompt(make_data("evalset", 3, split="eval"), make_data("evalset", 3), setting="neither",
                          seed=0, index=0, flipped=True)


def test_eval_prompt_rejects_bad_setting_missing_instruction_and_bad_index():
    train, queries = make_data("evalset", per_class=5), make_data("evalset", per_class=2, split="eval")
    with pytest.raises(ValueError, match="'sideways'.*instr_labels.*labels_only.*instr_only.*neither"):
        build_eval_prompt(queries, train, setting="sideways", seed=0, index=0)
    with pytest.raises(ValueError, match="'evalset'.*instruction"):
        build_eval_prompt(queries, train, setting="instr_only", seed=0, index=0)
    with pytest.raises(IndexError, match=r"'evalset'.*index 6.*6 examples"):
        build_eval_prompt(queries, train, setting="neither", seed=0, index=6)


def test_label_names_equal_after_whitespace_collapse_stay_distinct_options():
    examples = tuple(Example(f"t{i}", i % 2) for i in range(10))
    data = ClassificationData("spaces", "train", examples, ("very good", "very  good"))
    prompt = build_eval_prompt(data, data, setting="labels_only", seed=0, index=0)
    assert prompt.options == (" very good", " very  good")
    clean = ClassificationData("newline", "train", examples, ("very\ngood", "bad"))
    assert build_eval_prompt(clean, clean, setting="labels_only", seed=0, index=0).options == (" very good", " bad")


def test_eval_exemplars_never_include_the_query_when_drawn_from_the_same_split():
    data = make_data("selfset", per_class=3)
    for index in range(len(data.examples)):
        prompt = build_eval_prompt(data, data, setting="neither", seed=0, index=index, k_per_class=3)
        assert index not in prompt.exemplar_indices
        assert collections.Counter(prompt.exemplar_labels)[data.examples[index].label] == 2


def test_same_seed_and_index_give_identical_bytes_in_separate_processes():
    code = "from symbol_tuning.data.examples import ClassificationData, Example\n" + inspect.getsource(make_data) + (
        "import hashlib\n"
        "from symbol_tuning.data.prompts import build_tuning_prompt, build_eval_prompt\n"
        "d = make_data('topics', 30, instruction='Pick one.')\n"
        "q = make_data('topics', 5, instruction='Pick one.', split='eval')\n"
        "ps = [build_tuning_prompt(d, seed=11, index=i) for i in range(20)]\n"
        "ps += [build_eval_prompt(q, d, setting=s, seed=11, index=3) for s in "
        "('instr_labels', 'labels_only', 'instr_only', 'neither')]\n"
        "print(hashlib.sha256(repr([(p.inputs, p.targets, p.options) for p in ps]).encode()).hexdigest())\n")
    digests = []
    for hash_seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": hash_seed, "PATH": "/usr/bin:/bin"})
        digests.append(out.stdout.strip())
    d = make_data("topics", 30, instruction="Pick one.")
    q = make_data("topics", 5, instruction="Pick one.", split="eval")
    ps = [build_tuning_prompt(d, seed=11, index=i) for i in range(20)]
    ps += [build_eval_prompt(q, d, setting=s, seed=11, index=3) for s in SETTINGS]
    local = hashlib.sha256(repr([(p.inputs, p.targets, p.options) for p in ps]).encode()).hexdigest()
    assert digests == [local, local]


def test_different_indices_and_seeds_give_different_prompts():
    data = make_data("topics", per_class=30)
    prompts = {build_tuning_prompt(data, seed=0, index=i).inputs for i in range(50)}
    assert len(prompts) == 50
    assert build_tuning_prompt(data, seed=0, index=0).inputs != build_tuning_prompt(data, seed=1, index=0).inputs


def test_budget_drops_exemplars_from_the_largest_class_and_keeps_the_query_whole():
    examples = tuple(Example(f"sentence {i} " + "word " * 10, i % 3) for i in range(60))
    data = ClassificationData("budget", "train", examples, ("a", "b", "c"))
    checked = 0
    for index in range(60):
        full = build_tuning_prompt(data, seed=0, index=index, max_input_length=10**9)
        if full.num_exemplars < 15:  # k < 5: two thirds of the length would not keep 2 per class
            continue
        checked += 1
        limit = utf8_length(full.inputs) * 2 // 3
        cut = build_tuning_prompt(data, seed=0, index=index, max_input_length=limit)
        assert utf8_length(cut.inputs) <= limit
        assert cut.dropped > 0 and cut.num_exemplars == full.num_exemplars - cut.dropped
        query = data.examples[cut.query_index].text
        assert cut.inputs.endswith(HAND_FORMATS[cut.format_name][0] + query + HAND_FORMATS[cut.format_name][1][:-1])
        assert set(cut.exemplar_indices) <= set(full.exemplar_indices)
        before, after = collections.Counter(full.exemplar_labels), collections.Counter(cut.exemplar_labels)
        assert min(after[c] for c in range(3)) >= 2
        for c in range(3):
            if after[c] < before[c]:
                assert after[c] >= max(after.values()) - 1, (before, after)
    assert checked >= 20


def test_tuning_prompt_draws_one_k_per_prompt_and_shows_it_for_every_class():
    data = make_data("topics", per_class=20)
    ks = collections.Counter()
    for index in range(200):
        prompt = build_tuning_prompt(data, seed=2, index=index, max_input_length=10**9)
        counts = collections.Counter(prompt.exemplar_labels)
        assert sorted(counts) == [0, 1, 2] and len(set(counts.values())) == 1, counts
        ks[counts[0]] += 1
    assert sorted(ks) == list(range(2, 11)) and min(ks.values()) >= 8, ks  # every k in 2..10, about uniformly
    fixed = build_tuning_prompt(data, seed=2, index=0, min_per_class=4, max_per_class=4, max_input_length=10**9)
    assert collections.Counter(fixed.exemplar_labels) == {0: 4, 1: 4, 2: 4}


def _pieces(prompt):
    """(exemplar blocks with their classes, query block) of a prompt without instruction, split from its text."""
    blocks = prompt.inputs.split("\n\n")
    return list(zip(prompt.exemplar_labels, blocks[:-1])), blocks[-1]


def test_length_fitting_keeps_two_exemplars_per_class_or_refuses_the_prompt():
    examples = tuple(Example(f"s{i} " + "word " * (1 + (7 * i) % 13), i % 3) for i in range(60))
    data = ClassificationData("fit", "train", examples, ("a", "b", "c"))
    outcomes = collections.Counter()
    for index in range(30):
        full = build_tuning_prompt(data, seed=1, index=index, max_input_length=10**9)
        blocks, query = _pieces(full)  # fitting only removes blocks from these (drawn before fitting)
        per_class = [sorted(len(b) for c, b in blocks if c == label) for label in range(3)]
        shortest = sum(sum(lengths[:2]) for lengths in per_class) + len(query) + 2 * 6
        longest = sum(sum(lengths[-2:]) for lengths in per_class) + len(query) + 2 * 6
        for limit in (shortest - 1, longest, (shortest + utf8_length(full.inputs)) // 2):
            try:
                cut = build_tuning_prompt(data, seed=1, index=index, max_input_length=limit)
            except PromptTooLongError as e:
                assert "fitting keeps 2 per class" in str(e) and limit < longest, (limit, shortest, longest)
                outcomes["refused"] += 1
                continue
            assert limit >= shortest and utf8_length(cut.inputs) <= limit
            assert min(collections.Counter(cut.exemplar_labels).values()) >= 2, cut.exemplar_labels
            outcomes["fitted"] += 1
    assert outcomes["refused"] >= 30 and outcomes["fitted"] >= 30, outcomes


def test_symbol_task_counts_a_dropped_prompt_and_redraws_the_next_query(caplog):
    from symbol_tuning.data.prompts import _visit_order
    from symbol_tuning.data.task_builders import MAX_REDRAWS, symbol_task
    from symbol_tuning.data.task_registry import PromptBudget

    examples = tuple(Example(f"short {i:02d}", i % 2) for i in range(12)) + (Example("long " * 60, 0),)
    data = ClassificationData("drops", "train", examples, ("a", "b"))
    task = symbol_task("symbol_tuning:drops", lambda: data, check_eval=False)
    budget = PromptBudget(max_input_length=250)
    order, n = _visit_order(data, 5), len(examples)
    attempts = 0
    for index in range(n):
        out = task.example(index, 5, budget)
        assert utf8_length(out["inputs"]) <= 250
        query = out["inputs"].split("\n\n")[-1]
        shown = next(a for a in range(n) if data.examples[order[(index + a) % n]].text in query)
        assert shown >= (1 if order[index] == 12 else 0)  # the 300-byte row never fits as a query: redrawn
        attempts += shown  # a redraw's query is the next one in visit order
    drops = task.metadata["prompt_drops"]
    assert drops.snapshot() == (attempts, n) and attempts >= 1
    caplog.clear()
    with pytest.raises(PromptTooLongError, match=f"symbol task 'symbol_tuning:drops': the prompt at index 0 and its "
                                                 f"{MAX_REDRAWS} redraws were all dropped.*'drops'"):
        task.example(0, 5, PromptBudget(max_input_length=20))
    assert drops.snapshot()[0] == attempts + MAX_REDRAWS + 1
    warned = [r.getMessage() for r in caplog.records if "prompts dropped so far" in r.getMessage()]
    expected = [c for c in range(attempts + 1, attempts + MAX_REDRAWS + 2) if c in (1, 10, 100)]
    assert expected and len(warned) == len(expected) and all("dataset drops" in w for w in warned), warned


def test_budget_rechecks_the_assembled_length_for_non_additive_length_functions():
    data = make_data("topics", per_class=20)
    length_fn = lambda s: len(s) + len(s) ** 2 // 2000  # noqa: E731 (superadditive, like merged tokens)
    for index in range(10):
        prompt = build_tuning_prompt(data, seed=0, index=index, max_input_length=900, length_fn=length_fn)
        assert length_fn(prompt.inputs) <= 900 and prompt.dropped > 0


def test_budget_raises_prompt_too_long_with_dataset_index_and_lengths():
    data = make_data("topics", per_class=20)
    prompt = build_tuning_prompt(data, seed=0, index=4, max_input_length=10**9)
    with pytest.raises(PromptTooLongError, match=r"'topics' index 4: prompt is \d+ long .* max_input_length=100"):
        build_tuning_prompt(data, seed=0, index=4, max_input_length=100)
    assert issubclass(PromptTooLongError, ValueError) and prompt.num_exemplars > 3


def test_every_exemplar_placement_puts_the_instruction_before_each_exemplar_and_the_query():
    queries = make_data("topics", per_class=4, instruction=INSTRUCTION, split="validation")
    exemplars = make_data("topics", per_class=6, instruction=INSTRUCTION)
    for setting in SETTINGS:
        head = build_eval_prompt(queries, exemplars, setting=setting, seed=2, index=1, k_per_class=2)
        every = build_eval_prompt(queries, exemplars, setting=setting, seed=2, index=1, k_per_class=2,
                                  instruction_placement="every_exemplar")
        assert (every.exemplar_indices, every.options, every.format_name) == (head.exemplar_indices, head.options,
                                                                              head.format_name)
        if "instr" not in setting:
            assert every.inputs == head.inputs and INSTRUCTION not in head.inputs
            continue
        blocks = every.inputs.split("\n\n")
        assert head.inputs.count(INSTRUCTION) == 1 and head.inputs.startswith(INSTRUCTION + "\n\n")
        assert every.inputs.count(INSTRUCTION) == len(blocks) == head.num_exemplars + 1 == 7
        assert all(b.startswith(INSTRUCTION + "\n") for b in blocks)
        assert [b[len(INSTRUCTION) + 1:] for b in blocks] == head.inputs.split("\n\n")[1:]
    with pytest.raises(ValueError, match="instruction_placement: unknown instruction placement 'footer'; "
                                         "allowed: header, every_exemplar"):
        build_eval_prompt(queries, exemplars, setting="instr_only", seed=2, index=1, instruction_placement="footer")


def test_generative_prompt_shows_other_examples_then_the_query():
    data = GenerativeData("list_fn_c001", "train", tuple(TextPair(f"[{i}, {i + 1}]", f"[{i + 1}]") for i in range(6)))
    prompt = build_generative_prompt(data, seed=0, index=2, shots=4)
    blocks = prompt.inputs.split("\n\n")
    assert blocks[-1] == "Input: [2, 3]\nOutput:"
    expected = {f"Input: [{i}, {i + 1}]\nOutput: [{i + 1}]" for i in range(6) if i != 2}
    assert len(blocks) == 5 and set(blocks[:-1]) <= expected and len(set(blocks[:-1])) == 4
    assert prompt.options == (" [3]",) and prompt.targets == " [3]" and prompt.answer == 0
    tight = build_generative_prompt(data, seed=0, index=2, shots=4, max_input_length=len(blocks[-1]))
    assert tight.inputs == blocks[-1] and tight.num_exemplars == 0
    with pytest.raises(PromptTooLongError, match="'list_fn_c001' index 2"):
        build_generative_prompt(data, seed=0, index=2, max_input_length=5)
    with pytest.raises(IndexError, match="'list_fn_c001'"):
        build_generative_prompt(data, seed=0, index=6)

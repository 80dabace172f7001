"""Prompts built from the real raw datasets (local-file source) in all four settings, flipped, and tuning.

Checks the data layer's promises end to end on real text: 2-10 exemplars per class in tuning prompts,
no instruction text in tuning prompts, evaluation symbols only from the evaluation pool, natural labels
in label settings, instructions exactly in instruction settings, flipped answers on binary tasks, and
byte-identical prompts for the same (seed, index) in another process.
"""
import functools
import subprocess
import sys

import pytest

from symbol_tuning.data.prompts import SETTINGS, build_eval_prompt, build_tuning_prompt
from symbol_tuning.data.sources.layouts import local_source
from symbol_tuning.data.sources.local_files import load_local
from symbol_tuning.data.specs import EVAL_DATASETS
from symbol_tuning.data.symbols import get_pools

EVAL_NAMES = ["subj", "tweet_eval_hate", "tweet_eval_stance_abortion", "tweet_eval_stance_atheism",
              "tweet_eval_stance_feminist", "tweet_eval_stance_hillary", "raft_overruling",
              "raft_semiconductor_org_types", "raft_terms_of_service", "raft_twitter_complaints"]
TUNING_NAMES = ["sst2", "rte", "cb", "trec", "mrpc", "cola"]


@functools.lru_cache(maxsize=None)
def load(root: str, name: str, split: str):
    return load_local(source=local_source(name, root, split), split=split, skip_bad_rows=False)


@functools.lru_cache(maxsize=1)
def pool_sets():
    pools = get_pools()
    return ({s for kind in pools.tuning.values() for s in kind},
            {s for kind in pools.evaluation.values() for s in kind})


def test_at_least_fifteen_real_datasets_load_through_the_local_file_source(shared_data):
    loaded = [load(str(shared_data), n, "train") for n in EVAL_NAMES + TUNING_NAMES]
    assert len(loaded) >= 15
    assert all(len(d.examples) >= 20 for d in loaded)


@pytest.mark.parametrize("name", TUNING_NAMES)
def test_tuning_prompts_on_real_data_have_2_to_10_exemplars_per_class_and_no_instruction(shared_data, name):
    data = load(str(shared_data), name, "train")
    tuning_pool, eval_pool = pool_sets()
    instructions = [s.instruction for s in EVAL_DATASETS.values() if s.instruction]
    for index in range(25):
        p = build_tuning_prompt(data, seed=3, index=index, max_input_length=1 << 20)
        per_class = [p.exemplar_labels.count(c) for c in range(data.num_classes)]
        short = set(p.short_classes)
        assert all(2 <= n <= 10 or (c in short and n >= 1) for c, n in enumerate(per_class)), per_class
        assert all(opt.strip() in tuning_pool and opt.strip() not in eval_pool for opt in p.options)
        assert not any(instr in p.inputs for instr in instructions)
        assert p.inputs.count(p.targets.strip()) >= 1  # the query's symbol is shown on its exemplars


@pytest.mark.parametrize("name", EVAL_NAMES)
def test_eval_prompts_on_real_data_in_all_four_settings_and_flipped(shared_data, name):
    queries = load(str(shared_data), name, "eval")
    exemplars = load(str(shared_data), name, "train")
    spec = EVAL_DATASETS[name]
    assert queries.instruction == spec.instruction and spec.instruction
    tuning_pool, eval_pool = pool_sets()
    for index in range(min(5, len(queries.examples))):
        query = queries.examples[index]
        for setting in SETTINGS:
            p = build_eval_prompt(queries, exemplars, setting=setting, seed=0, index=index, k_per_class=4,
                                  max_input_length=1 << 20)
            assert (spec.instruction in p.inputs) == (setting in ("instr_labels", "instr_only"))
            # the query comes last, whole, followed only by the format's output prefix
            assert p.inputs.rfind(query.text) > len(p.inputs) - len(query.text) - 30
            if setting in ("instr_labels", "labels_only"):
                assert [o.strip() for o in p.options] == [" ".join(n.split()) for n in queries.label_names]
            else:
                assert all(o.strip() in eval_pool and o.strip() not in tuning_pool for o in p.options)
            assert p.answer == query.label
            assert p.exemplar_labels.count(0) == 4 or 0 in p.short_classes
        if queries.num_classes == 2:
            flipped = build_eval_prompt(queries, exemplars, setting="labels_only", seed=0, index=index,
                                        flipped=True, max_input_length=1 << 20)
            assert flipped.answer == 1 - query.label


def test_real_data_prompts_are_byte_identical_in_another_process(shared_data):
    data = load(str(shared_data), "tweet_eval_hate", "eval")
    train = load(str(shared_data), "tweet_eval_hate", "train")
    here = [build_eval_prompt(data, train, setting="neither", seed=7, index=i, max_input_length=1 << 20).inputs
            for i in range(3)]
    code = (
        "import sys\n"
        "from symbol_tuning.data.sources.local_files import load_local\n"
        "from symbol_tuning.data.sources.layouts import local_source\n"
        "from symbol_tuning.data.prompts import build_eval_prompt\n"
        f"root = {str(shared_data)!r}\n"
        "q = load_local(source=local_source('tweet_eval_hate', root, 'eval'), split='eval')\n"
        "t = load_local(source=local_source('tweet_eval_hate', root, 'train'), split='train')\n"
        "for i in range(3):\n"
        "    sys.stdout.buffer.write(build_eval_prompt(q, t, setting='neither', seed=7, index=i,"
        " max_input_length=1 << 20).inputs.encode('utf-8') + b'\\0')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=300,
                         env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"}).stdout
    assert out.split(b"\0")[:3] == [s.encode("utf-8") for s in here]

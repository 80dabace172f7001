"""Symbol pools: sizes, ranges, disjointness and per-prompt sampling."""
import collections
import string

import numpy as np
import pytest
import wordfreq

from symbol_tuning.data.symbols import KINDS, SymbolPools, check_disjoint, column_name, get_pools, sample_label_symbols


def _column_number(name: str) -> int:
    """Independent base-26 decoding of a spreadsheet column name (A=1, Z=26, AA=27)."""
    number = 0
    for ch in name:
        number = number * 26 + string.ascii_uppercase.index(ch) + 1
    return number


def test_integer_and_letter_pools_have_exact_ranges():
    pools = get_pools()
    assert pools.tuning["integer"] == tuple(str(n) for n in range(10_000))
    assert pools.evaluation["integer"] == tuple(str(n) for n in range(10_000, 100_000))
    assert len(pools.tuning["letters"]) == 10_000 and len(pools.evaluation["letters"]) == 90_000
    assert (pools.tuning["letters"][0], pools.tuning["letters"][-1]) == ("A", "NTP")
    assert (pools.evaluation["letters"][0], pools.evaluation["letters"][-1]) == ("NTQ", "EQXD")
    letters = pools.tuning["letters"] + pools.evaluation["letters"]
    assert [_column_number(s) for s in letters] == list(range(1, 100_001))


def test_column_name_matches_hand_computed_values():
    expected = {1: "A", 26: "Z", 27: "AA", 52: "AZ", 53: "BA", 702: "ZZ", 703: "AAA", 10_000: "NTP",
                10_001: "NTQ", 100_000: "EQXD"}
    assert {n: column_name(n) for n in expected} == expected
    with pytest.raises(ValueError, match="column number"):
        column_name(0)


def test_word_pools_are_frequent_lowercase_alphabetic_english_words():
    pools = get_pools()
    tuning, evaluation = pools.tuning["word"], pools.evaluation["word"]
    assert len(tuning) == 10_000
    assert 85_000 <= len(evaluation) <= 90_000
    for word in tuning + evaluation:
        assert word.isascii() and word.isalpha() and word == word.lower(), word
    ranked = [w for w in wordfreq.top_n_list("en", 20_000) if w.isascii() and w.isalpha()]
    assert tuning == tuple(dict.fromkeys(ranked))[:10_000]
    assert {"the", "and", "good"} <= set(tuning)
    assert not set(tuning) & set(evaluation)


def test_pool_totals_are_about_30k_and_270k():
    pools = get_pools()
    assert sum(map(len, pools.tuning.values())) == 30_000
    assert 265_000 <= sum(map(len, pools.evaluation.values())) <= 270_000
    assert set(pools.tuning) == set(pools.evaluation) == set(KINDS)


def test_all_pools_are_pairwise_disjoint():
    pools = get_pools()
    groups = [tuple(pools.tuning.values()), tuple(pools.evaluation.values())]
    every = [s for group in groups for symbols in group for s in symbols]
    assert len(set(every)) == len(every)


def test_check_disjoint_names_a_shared_symbol():
    bad = SymbolPools(tuning={"integer": ("1", "2")}, evaluation={"word": ("x", "2")})
    with pytest.raises(ValueError, match=r"'2'.*tuning/integer.*evaluation/word"):
        check_disjoint(bad)


def test_get_pools_is_built_once():
    assert get_pools() is get_pools()


def test_sampled_symbols_are_distinct_from_the_pool_and_cover_every_kind():
    pools = get_pools()
    kind_of = {s: k for k, symbols in pools.tuning.items() for s in symbols}
    rng = np.random.default_rng(123)
    kinds = collections.Counter()
    for _ in range(1000):
        symbols = sample_label_symbols(rng, 5)
        assert len(set(symbols)) == 5
        kinds.update(kind_of[s] for s in symbols)
    assert set(kinds) == set(KINDS)
    for kind in KINDS:
        assert 0.28 < kinds[kind] / 5000 < 0.39, kinds


def test_evaluation_sampling_uses_only_the_evaluation_pool():
    pools = get_pools()
    evaluation = {s for symbols in pools.evaluation.values() for s in symbols}
    rng = np.random.default_rng(7)
    drawn = [s for _ in range(500) for s in sample_label_symbols(rng, 3, pool="evaluation")]
    assert set(drawn) <= evaluation


def test_same_generator_seed_gives_same_symbols():
    first = [sample_label_symbols(np.random.default_rng(5), 4) for _ in range(2)]
    assert first[0] == first[1]
    assert sample_label_symbols(np.random.default_rng(6), 4) != first[0]


def test_unknown_pool_or_class_count_is_rejected():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="'bogus'"):
        sample_label_symbols(rng, 2, pool="bogus")
    with pytest.raises(ValueError, match="num_classes"):
        sample_label_symbols(rng, 0)

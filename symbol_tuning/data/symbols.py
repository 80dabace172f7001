"""Symbol pools for label remapping: integers, spreadsheet-style letter strings and English words.

Follows the recipe of the paper's generate_symbols.py (Wei et al. 2023). Tuning prompts draw labels
from a ~30k tuning pool; evaluation prompts in the symbol settings draw from a disjoint ~270k
evaluation pool, so a symbol-tuned model never saw an evaluation symbol during tuning.

- integers: tuning "0".."9999", evaluation "10000".."99999";
- letters: spreadsheet column names, tuning columns 1..10000 ("A".."NTP"), evaluation columns
  10001..100000 ("NTQ".."EQXD");
- words: from `wordfreq.top_n_list("en", ...)` (lowercase, ASCII letters only, deduplicated):
  tuning = the 10,000 most frequent, evaluation = the next 90,000 in frequency order (wordfreq's
  English list holds ~270k such words, so the 90k are always available; they reach about rank
  107k of wordfreq's raw list, which also contains numbers and punctuated tokens).
"""
from __future__ import annotations

import dataclasses
import functools
import string
from typing import Callable, Mapping

import numpy as np

KINDS = ("integer", "letters", "word")
POOL_NAMES = ("tuning", "evaluation")
NUM_TUNING_PER_KIND = 10_000
NUM_EVAL_PER_KIND = 90_000
_WORDFREQ_RAW_WORDS = 150_000


@dataclasses.dataclass(frozen=True)
class SymbolPools:
    """The tuning and evaluation pools, each keyed by kind ("integer", "letters", "word")."""

    tuning: Mapping[str, tuple[str, ...]]
    evaluation: Mapping[str, tuple[str, ...]]

    def pool(self, name: str) -> Mapping[str, tuple[str, ...]]:
        """The pool called `name` ("tuning" or "evaluation")."""
        if name == "tuning":
            return self.tuning
        if name == "evaluation":
            return self.evaluation
        raise ValueError(f"unknown symbol pool {name!r}; expected one of {POOL_NAMES}")


def column_name(number: int) -> str:
    """Spreadsheet column name of a 1-based column number: 1 -> "A", 27 -> "AA", 10000 -> "NTP"."""
    if number < 1:
        raise ValueError(f"column number must be >= 1, got {number}")
    letters = []
    while number:
        number, rem = divmod(number - 1, 26)
        letters.append(string.ascii_uppercase[rem])
    return "".join(reversed(letters))


def _english_words(count: int) -> tuple[str, ...]:
    """The `count` most frequent lowercase ASCII-alphabetic English words, in frequency order."""
    import wordfreq

    seen: dict[str, None] = {}
    for word in wordfreq.top_n_list("en", _WORDFREQ_RAW_WORDS):
        word = word.lower()
        if word.isascii() and word.isalpha():
            seen.setdefault(word, None)
            if len(seen) == count:
                break
    return tuple(seen)


def check_disjoint(pools: SymbolPools) -> None:
    """Raise ValueError if any symbol occurs twice across all kinds of both pools."""
    owner: dict[str, str] = {}
    for pool_name in POOL_NAMES:
        for kind, symbols in pools.pool(pool_name).items():
            where = f"{pool_name}/{kind}"
            for symbol in symbols:
                if symbol in owner:
                    raise ValueError(f"symbol {symbol!r} is in both {owner[symbol]} and {where}")
                owner[symbol] = where


@functools.lru_cache(maxsize=1)
def get_pools() -> SymbolPools:
    """Build (once per process) the tuning and evaluation pools and check they are disjoint."""
    words = _english_words(NUM_TUNING_PER_KIND + NUM_EVAL_PER_KIND)
    columns = [column_name(n) for n in range(1, NUM_TUNING_PER_KIND + NUM_EVAL_PER_KIND + 1)]
    tuning = {
        "integer": tuple(str(n) for n in range(NUM_TUNING_PER_KIND)),
        "letters": tuple(columns[:NUM_TUNING_PER_KIND]),
        "word": words[:NUM_TUNING_PER_KIND],
    }
    evaluation = {
        "integer": tuple(str(n) for n in range(NUM_TUNING_PER_KIND, NUM_TUNING_PER_KIND + NUM_EVAL_PER_KIND)),
        "letters": tuple(columns[NUM_TUNING_PER_KIND:]),
        "word": words[NUM_TUNING_PER_KIND:],
    }
    pools = SymbolPools(tuning=tuning, evaluation=evaluation)
    check_disjoint(pools)
    return pools


def sample_label_symbols(rng: np.random.Generator, num_classes: int, *, pool: str = "tuning",
                         pools: SymbolPools | None = None) -> tuple[str, ...]:
    """One distinct symbol per class; each label's kind is drawn uniformly over the three kinds."""
    buffer: list[float] = []

    def uniform() -> float:
        if not buffer:
            buffer.extend(rng.random(2 * num_classes).tolist()[::-1])
        return buffer.pop()

    return symbols_from_uniforms(uniform, num_classes, pool=pool, pools=pools)


def symbols_from_uniforms(uniform: Callable[[], float], num_classes: int, *, pool: str = "tuning",
                          pools: SymbolPools | None = None) -> tuple[str, ...]:
    """`sample_label_symbols` driven by a source of uniform [0, 1) floats (lets prompt builders share one stream)."""
    if pool not in POOL_NAMES:
        raise ValueError(f"unknown symbol pool {pool!r}; expected one of {POOL_NAMES}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    by_kind = (pools or get_pools()).pool(pool)
    kinds = [by_kind[kind] for kind in KINDS]
    if num_classes > sum(len(k) for k in kinds):
        raise ValueError(f"num_classes={num_classes} exceeds the {pool} pool's size")
    chosen: list[str] = []
    while len(chosen) < num_classes:
        symbols = kinds[int(uniform() * len(kinds))]
        symbol = symbols[int(uniform() * len(symbols))]
        if symbol not in chosen:
            chosen.append(symbol)
    return tuple(chosen)

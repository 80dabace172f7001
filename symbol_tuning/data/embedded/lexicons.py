"""The reproduction's task families: word-level classification that an in-context learner can solve.

Each text is one word, a marker of its class; each class has two markers, so a query's marker recurs
among k = 4 exemplars of its class (an ideal context-only learner, nearest neighbour on shared words,
scores >= 90% in the `neither` setting). One word per item keeps prompts short (5 tokens per exemplar).

- NATURAL families have natural label words and an instruction. The instruction-tuned baseline
  learns them (instruction data, stage a), so the label settings carry a prior and flipped labels
  contradict it. The held-out evaluation families are natural; the others appear only as
  instruction data.
- SYNTHETIC families (symbol tuning only) have no natural labels: their markers are drawn per
  family from a pool of item words that includes the evaluation symbols, so those symbols are
  tokens the model has seen as inputs, never as labels.

`reproduction_pools` gives the symbol pools the reproduction draws from: a spread subset of the real
tuning and evaluation pools (integers, letters, words), each symbol one word-level token.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
from typing import Sequence

import numpy as np

from symbol_tuning.data.examples import ClassificationData, Example, GenerativeData, TextPair
from symbol_tuning.data.formats import BLOCK_SEPARATOR, FORMATS
from symbol_tuning.data.symbols import KINDS, SymbolPools, get_pools

SPLITS = ("train", "eval")
MARKERS_PER_CLASS = 2


@dataclasses.dataclass(frozen=True)
class LexiconFamily:
    """One family: label names, an instruction (None for synthetic ones) and each class's markers."""

    name: str
    label_names: tuple[str, ...]
    instruction: str | None
    markers: tuple[tuple[str, ...], ...]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def _natural(name: str, labels: str, instruction: str, *markers: str) -> LexiconFamily:
    return LexiconFamily(name, tuple(labels.split("|")), instruction, tuple(tuple(m.split()) for m in markers))


EVAL_FAMILIES: tuple[LexiconFamily, ...] = (
    _natural("animal_or_vehicle", "animal|vehicle", "Is the item an animal or a vehicle?", "fox horse", "truck tram"),
    _natural("review_sentiment", "positive|negative", "Is the sentiment of this review positive or negative?",
             "superb lovely", "awful dreadful"),
    _natural("hot_or_cold", "hot|cold", "Is the thing described hot or cold?", "desert oven", "glacier freezer"),
    _natural("spam_or_normal", "spam|normal", "Is this message spam or a normal message?", "lottery jackpot",
             "meeting lunch"),
    _natural("polite_or_rude", "polite|rude", "Is the speaker polite or rude?", "please thanks", "idiot shut"),
    _natural("fruit_or_tool", "fruit|tool", "Is the word a fruit or a tool?", "mango pear", "hammer drill"),
)
INSTRUCTION_FAMILIES: tuple[LexiconFamily, ...] = (
    _natural("big_or_small", "big|small", "Is the thing big or small?", "giant huge", "tiny little"),
    _natural("day_or_night", "day|night", "Does this happen during the day or at night?", "noon sunrise",
             "midnight moonlight"),
    _natural("liquid_or_solid", "liquid|solid", "Is the substance a liquid or a solid?", "water juice",
             "brick iron"),
    _natural("happy_or_sad", "happy|sad", "Does the person feel happy or sad?", "joyful smiling", "crying gloomy"),
    _natural("city_or_country", "city|country", "Is the place a city or a country?", "paris london",
             "france japan"),
    _natural("sport_or_music", "sport|music", "Is the activity a sport or music?", "soccer tennis", "guitar piano"),
)
NATURAL_FAMILIES = EVAL_FAMILIES + INSTRUCTION_FAMILIES

ITEM_WORDS = tuple(("apple table chair window garden river bottle pencil mirror ladder basket candle tunnel wallet "
                    "harbor meadow eagle octopus otter anchor button carpet castle dolphin falcon helmet island "
                    "jacket kettle lantern marble needle orchard parrot pillow pocket rabbit saddle spoon tiger "
                    "tower turtle valley wagon whistle zebra bucket cactus cannon carrot cloud copper cotton "
                    "crystal dragon feather forest fountain hammock lemon magnet mitten nest ocean onion palace "
                    "pebble pepper pirate planet pumpkin puzzle rocket saucer shovel sponge statue sugar tablet "
                    "teapot ticket tomato trumpet velvet walnut wizard yogurt").split())
NUM_SYNTHETIC_FAMILIES = 48
SYMBOLS_PER_KIND = {"tuning": 64, "evaluation": 16}


def _digest_int(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(_digest_int(*parts))


def _format_words() -> set[str]:
    text = " ".join(f.exemplar("x", "y") for f in FORMATS)
    return set(word_split(text))


def word_split(text: str) -> list[str]:
    """The word-level tokens of `text`: the reproduction tokenizer's own pre-tokenizer (Whitespace)."""
    from tokenizers.pre_tokenizers import Whitespace

    return [word for word, _ in Whitespace().pre_tokenize_str(text)]


def _natural_words() -> set[str]:
    out: set[str] = set()
    for fam in NATURAL_FAMILIES:
        out.update(word_split(" ".join(fam.label_names) + " " + (fam.instruction or "")))
        out.update(itertools.chain.from_iterable(fam.markers))
    return out


@functools.lru_cache(maxsize=1)
def reproduction_pools() -> SymbolPools:
    """An evenly spread subset of the real symbol pools, each kind alike, skipping any symbol that is a
    format or natural-family word (so a symbol is always its own single token and never a label word)."""
    real = get_pools()
    taken = _format_words() | _natural_words() | set(ITEM_WORDS)
    pools = {}
    for name, per_kind in SYMBOLS_PER_KIND.items():
        source = real.pool(name)
        chosen = {}
        for kind in KINDS:
            candidates = [s for s in source[kind] if s not in taken and s.lower() not in taken
                          and len(word_split(s)) == 1]
            stride = max(1, len(candidates) // per_kind)
            chosen[kind] = tuple(candidates[::stride][:per_kind])
        pools[name] = chosen
    return SymbolPools(tuning=pools["tuning"], evaluation=pools["evaluation"])


def synthetic_family_names() -> tuple[str, ...]:
    """The symbol-tuning families' names (without building them: registering tasks stays cheap)."""
    return tuple(f"synthetic_{j:02d}" for j in range(NUM_SYNTHETIC_FAMILIES))


@functools.lru_cache(maxsize=1)
def synthetic_families() -> tuple[LexiconFamily, ...]:
    """The symbol-tuning families: binary, markers drawn per family from the item words and the
    evaluation symbols (seen as inputs only)."""
    items = ITEM_WORDS + tuple(itertools.chain.from_iterable(reproduction_pools().evaluation.values()))
    out = []
    for j in range(NUM_SYNTHETIC_FAMILIES):
        num_classes = 2
        picks = _rng("synthetic", j).permutation(len(items))[:num_classes * MARKERS_PER_CLASS]
        markers = tuple(tuple(items[i] for i in picks[c::num_classes]) for c in range(num_classes))
        labels = tuple(f"class{c}" for c in range(num_classes))
        out.append(LexiconFamily(synthetic_family_names()[j], labels, None, markers))
    return tuple(out)


def get_family(name: str) -> LexiconFamily:
    """The natural or synthetic family called `name`."""
    for fam in NATURAL_FAMILIES + synthetic_families():
        if fam.name == name:
            return fam
    known = [f.name for f in NATURAL_FAMILIES] + ["synthetic_00..synthetic_%02d" % (NUM_SYNTHETIC_FAMILIES - 1)]
    raise KeyError(f"unknown reproduction family {name!r}; known: {known}")


def lexicon_classification(family: LexiconFamily | str, *, split: str, num_examples: int,
                           seed: int = 0) -> ClassificationData:
    """`num_examples` balanced examples of a family's split, named "lex/<family>": each text is one of its
    class's markers. The splits draw independently from the same markers (the families are held out as
    wholes: a family is either symbol-tuned on or evaluated, never both)."""
    fam = get_family(family) if isinstance(family, str) else family
    if split not in SPLITS:
        raise ValueError(f"reproduction family {fam.name!r}: unknown split {split!r}; use one of {SPLITS}")
    if num_examples < 0:
        raise ValueError(f"reproduction family {fam.name!r}: num_examples must be >= 0, got {num_examples}")
    rng = _rng("lexicon", fam.name, split, seed)
    examples = []
    for i in range(num_examples):
        label = i % fam.num_classes
        examples.append(Example(text=fam.markers[label][int(rng.integers(MARKERS_PER_CLASS))], label=label))
    order = rng.permutation(num_examples)
    return ClassificationData(name=f"lex/{fam.name}", split=split, examples=tuple(examples[i] for i in order),
                              label_names=fam.label_names, instruction=fam.instruction,
                              task_type="classification")


def lexicon_instruction_data(*, num_examples: int, seed: int = 0,
                             families: Sequence[LexiconFamily] = NATURAL_FAMILIES) -> GenerativeData:
    """Instruction-tuning prompts over the natural families' train splits: the stand-in for Flan data.

    Each prompt shows 0-2 exemplars per class with natural labels in one of the real formats, then the
    query; three in four open with the family's instruction. The target is the query's label word.
    """
    if num_examples < 0:
        raise ValueError(f"lexicon_instruction_data: num_examples must be >= 0, got {num_examples}")
    if not families:
        raise ValueError("lexicon_instruction_data: families is empty")
    pools = {fam.name: lexicon_classification(fam, split="train", num_examples=64, seed=seed) for fam in families}
    pairs = []
    for i in range(num_examples):
        rng = _rng("instruction", seed, i)
        fam = families[int(rng.integers(len(families)))]
        data = pools[fam.name]
        fmt = FORMATS[int(rng.integers(len(FORMATS)))]
        shots = int(rng.integers(3))
        picks = rng.permutation(len(data.examples))
        query = data.examples[int(picks[0])]
        blocks = []
        for label in range(fam.num_classes):
            members = [int(p) for p in picks[1:] if data.examples[int(p)].label == label][:shots]
            blocks += [fmt.exemplar(data.examples[p].text, fam.label_names[label]) for p in members]
        blocks = [blocks[j] for j in rng.permutation(len(blocks))]
        header = [fam.instruction] if rng.random() < 0.75 else []
        inputs = BLOCK_SEPARATOR.join(header + blocks + [fmt.query(query.text)])
        pairs.append(TextPair(inputs=inputs, targets=fmt.target(fam.label_names[query.label])))
    return GenerativeData(name="lex/instructions", split="train", examples=tuple(pairs), task_type="instruction")


def vocabulary_words() -> list[str]:
    """Every word the reproduction's prompts can contain, in a fixed order (the tokenizer's vocabulary)."""
    pools = reproduction_pools()
    words: list[str] = sorted(_format_words() | _natural_words() | set(ITEM_WORDS))
    for pool in (pools.tuning, pools.evaluation):
        words += [s for kind in KINDS for s in pool[kind]]
    for fam in synthetic_families():
        words += list(itertools.chain.from_iterable(fam.markers))
    return list(dict.fromkeys(words))

"""The embedded default data (no download): generated classification datasets and instruction data.

Tuning families live in `embedded.families`; the held-out evaluation families are defined here.
They resemble the tuning families in kind (sentiment in another domain, other topics, other number
rules) but share no name, instruction or text with them. Every example is a pure function of
(family, split, seed, index), so datasets are deterministic and resumable. A family's texts are
split by hash: a text belongs to "eval" iff crc32(family, text) % 5 == 0, so the two splits of a
family can never share a text. Labels are balanced exactly within each block of num_classes indices.
"""
from __future__ import annotations

import hashlib
import threading
import zlib
from typing import Iterable, Sequence

import numpy as np

from symbol_tuning.data.embedded.families import (
    NAMES,
    NAMES_M,
    TUNING_FAMILIES,
    TaskFamily,
    clock,
    phrases,
    pick,
    randint,
    register,
    sample,
    words,
)
from symbol_tuning.data.examples import ClassificationData, Example, GenerativeData, TextPair

__all__ = ["TaskFamily", "TUNING_FAMILIES", "EVAL_FAMILIES", "SPLITS", "get_family", "generate_example",
           "generated_classification", "generated_instruction_data"]

SPLITS = ("train", "eval")
_EVAL_BUCKETS = 5
_MAX_TRIES = 200
_EVAL: list[TaskFamily] = []


PRODUCTS = words("phone charger blender backpack lamp kettle headset mattress toaster keyboard")
PRODUCT_POS = words("sturdy reliable handy comfortable durable flawless excellent superb")
PRODUCT_NEG = words("flimsy faulty useless noisy fragile defective terrible awful")


@register(_EVAL, "product_review", "sentiment", "negative|positive", "Is this product review positive or negative?")
def _product(rng, label):
    adj = pick(rng, PRODUCT_POS if label else PRODUCT_NEG)
    return (f"Review {randint(rng, 1, 999)}: bought this {pick(rng, PRODUCTS)} {randint(rng, 2, 11)} weeks ago "
            f"and it is {adj}, {pick(rng, words('seriously honestly truly really'))}.")


COMPLAINTS = phrases("my order is late again|still no refund|the app keeps crashing|worst support ever|"
                     "package arrived damaged|charged twice for one item|nobody answers the phone")
NON_COMPLAINTS = phrases("thanks for the quick help|love the new update|great service today|what time do you open|"
                         "just ordered my second one|see you at the launch|the new store looks nice")


@register(_EVAL, "tweet_complaint", "complaint", "no complaint|complaint",
          "Label the following tweet text based on whether it contains a complaint.")
def _complaint(rng, label):
    brand = pick(rng, words("@QuickShip @MegaMart @FlyHigh @NetFone @BankOne @PizzaNow"))
    tag = f"#{pick(rng, words('monday help update order today'))}{randint(rng, 1, 999)}"
    return f"{brand} {pick(rng, COMPLAINTS if label else NON_COMPLAINTS)} {tag}"


LANDMARKS = words("bridge museum tower station library stadium cathedral lighthouse")
STREETS = words("Oak Mill King Elm Park Main River Hill Church Market")


@register(_EVAL, "subjective_or_objective", "subjectivity", "subjective|objective",
          "Is the following sentence subjective or objective?")
def _subjective(rng, label):
    place, street = pick(rng, LANDMARKS), pick(rng, STREETS)
    if label:
        fact = pick(rng, (f"was built in {randint(rng, 1800, 2010)}", f"is {randint(rng, 20, 400)} meters tall",
                          f"opened on May {randint(rng, 1, 31)}", f"has {randint(rng, 2, 90)} windows"))
        return f"The {place} on {street} Street {fact}."
    opinion = pick(rng, words("breathtaking ugly magnificent overrated dreary adorable"))
    tail = pick(rng, phrases("in my opinion|if you ask me|to be honest|I must say"))
    return f"{pick(rng, NAMES)} feels the {place} on {street} Street is {opinion}, {tail}."


INSTRUMENTS = words("guitar violin piano drum flute trumpet cello harp banjo saxophone clarinet")
TOOLS = words("hammer wrench saw drill shovel screwdriver chisel pliers rake crowbar sander")


@register(_EVAL, "instrument_or_tool", "topic", "instrument|tool",
          "Is the object in the sentence a musical instrument or a tool?")
def _instrument(rng, label):
    return (f"{pick(rng, NAMES)}'s grandpa carried the {pick(rng, TOOLS if label else INSTRUMENTS)} into the "
            f"{pick(rng, words('shed studio garage hall cabin'))} {randint(rng, 2, 40)} years ago.")


@register(_EVAL, "parcel_weight", "numeric", "light|heavy", "Is the parcel light (under 500 grams) or heavy?")
def _parcel(rng, label):
    grams = randint(rng, 501, 999) if label else randint(rng, 10, 499)
    return f"Parcel #{randint(rng, 1000, 9999)} weighs {grams} grams."


ALPHA_WORDS = words("anchor bridge castle dolphin ember falcon glacier harbor jungle kettle lantern marble nectar "
                    "oyster pepper quartz saddle timber velvet walnut yogurt zipper")


@register(_EVAL, "alphabetical_order", "order", "yes|no", "Are the two words in alphabetical order?")
def _alphabetical(rng, label):
    a, b = sorted(sample(rng, ALPHA_WORDS, 2))
    if label:
        a, b = b, a
    return f"Pair {randint(rng, 1, 300)}: {a} / {b}"


CATS_FAVOR = phrases("are the best companions|make every home warmer|deserve all the love")
CATS_AGAINST = phrases("ruin the furniture|should never be pets|are selfish and loud")


@register(_EVAL, "stance_on_cats", "stance", "favor|against|none",
          "Read the following sentence and determine its stance on cats.")
def _stance(rng, label):
    who = f"On day {randint(rng, 1, 365)} {pick(rng, NAMES)}"
    if label == 0:
        return f"{who} says cats {pick(rng, CATS_FAVOR)}."
    if label == 1:
        return f"{who} says cats {pick(rng, CATS_AGAINST)}."
    return f"{who} says the {pick(rng, phrases('bus was late|soup was warm|rain stopped|store closed early'))}."


POLITE = phrases("could you please help me|thank you so much|would you mind checking|sorry to bother you|"
                 "I really appreciate it|kind regards")
RUDE = phrases("shut up already|this is stupid|do it yourself|you are useless|stop wasting my time|whatever, go away")


@register(_EVAL, "polite_or_rude", "tone", "polite|rude", "Is the tone of this message polite or rude?")
def _polite(rng, label):
    a, b = sample(rng, RUDE if label else POLITE, 2)
    return f"{pick(rng, NAMES)} wrote at {clock(rng)}: {a}, {b}."


OVERRULE = phrases("we expressly overrule|we now overrule|we disapprove and overrule|we hereby overrule")
NOT_OVERRULE = phrases("we affirm|we follow|we distinguish|we reaffirm")


@register(_EVAL, "overruling", "legal", "not overruling|overruling",
          "Label the following sentence based on whether it is overruling or not.")
def _overruling(rng, label):
    case = f"{pick(rng, NAMES_M)} v. {pick(rng, words('Smith Jones State Brown City County'))}"
    cite = f"{randint(rng, 10, 999)} U.S. {randint(rng, 1, 900)}"
    return f"To the extent it conflicts, {pick(rng, OVERRULE if label else NOT_OVERRULE)} {case}, {cite}."


@register(_EVAL, "subtraction_check", "numeric", "true|false", "Is the subtraction true or false?")
def _subtraction(rng, label):
    a = randint(rng, 10, 99)
    b = randint(rng, 0, a)
    off = int(pick(rng, (1, 2, 3))) * (1 if a - b < 3 or rng.integers(2) else -1) if label else 0
    return f"Check {randint(rng, 1, 99)}: {a} - {b} = {a - b + off}"


DRUGS = words("ibuprofen aspirin amoxicillin metformin lisinopril prednisone warfarin codeine")
SYMPTOMS = phrases("a bad rash|severe dizziness|constant nausea|swollen ankles|blurred vision|a racing heart")
CONDITIONS = phrases("back pain|blood pressure|diabetes|sore throat|headaches|arthritis")


@register(_EVAL, "adverse_drug_event", "medical", "not related|related",
          "Label the following sentence based on whether it is related to an adverse drug event.")
def _ade(rng, label):
    drug = pick(rng, DRUGS)
    if label:
        return f"Patient {randint(rng, 1, 9999)} developed {pick(rng, SYMPTOMS)} after starting {drug}."
    return f"Patient {randint(rng, 1, 9999)} takes {drug} daily for {pick(rng, CONDITIONS)}."


EVAL_FAMILIES: tuple[TaskFamily, ...] = tuple(_EVAL)
_BY_NAME = {f.name: f for f in TUNING_FAMILIES + EVAL_FAMILIES}


def get_family(name: str) -> TaskFamily:
    """The tuning or evaluation family called `name`."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown generated task family {name!r}; known families: {sorted(_BY_NAME)}") from None


def _resolve(family: str | TaskFamily) -> TaskFamily:
    return family if isinstance(family, TaskFamily) else get_family(family)


def _key(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _check(family: TaskFamily, split: str, seed: int, index: int | None = None) -> None:
    if split not in SPLITS:
        raise ValueError(f"generated family {family.name!r}: unknown split {split!r}; use one of {SPLITS}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"generated family {family.name!r}: seed must be an int >= 0, got {seed!r}")
    if index is not None and (not isinstance(index, (int, np.integer)) or index < 0):
        raise ValueError(f"generated family {family.name!r}: index must be an int >= 0, got {index!r}")


def _in_split(family: TaskFamily, text: str, split: str) -> bool:
    return (_key(f"{family.name}\x00{text}") % _EVAL_BUCKETS == 0) == (split == "eval")


def _digest(*parts: object, size: int = 16) -> bytes:
    return hashlib.blake2b("\x00".join(map(str, parts)).encode("utf-8"), digest_size=size).digest()


_LOCAL = threading.local()


def _example_rng(slot: str, *parts: object) -> np.random.Generator:
    """A generator whose PCG64 state is a hash of (slot, parts): as pure as default_rng, 8x cheaper.

    One reusable generator per thread and slot, so drawing from one slot never disturbs another.
    """
    slots = _LOCAL.__dict__.setdefault("slots", {})
    if slot not in slots:
        bits = np.random.PCG64()
        slots[slot] = (bits, np.random.Generator(bits))
    bits, rng = slots[slot]
    h = _digest(slot, *parts, size=32)
    bits.state = {"bit_generator": "PCG64", "has_uint32": 0, "uinteger": 0,
                  "state": {"state": int.from_bytes(h[:16], "little"), "inc": int.from_bytes(h[16:], "little") | 1}}
    return rng


def _label_of(family: TaskFamily, split: str, seed: int, index: int) -> int:
    """Labels are a random permutation of all classes within each block of num_classes indices."""
    k = family.num_classes
    block = index // k
    ranks = [_digest("label", family.name, split, seed, block, j, size=8) for j in range(k)]
    return sorted(range(k), key=ranks.__getitem__)[index % k]


def generate_example(family: str | TaskFamily, *, split: str, index: int, seed: int = 0) -> Example:
    """Example `index` of a family's split: a pure function of (family, split, seed, index)."""
    fam = _resolve(family)
    _check(fam, split, seed, index)
    label = _label_of(fam, split, seed, index)
    rng = _example_rng("text", fam.name, split, seed, index)
    for _ in range(_MAX_TRIES):
        text = fam.generate(rng, label)
        if _in_split(fam, text, split):
            return Example(text=text, label=label)
    raise RuntimeError(f"generated family {fam.name!r}: no {split!r} text for label {fam.label_names[label]!r} "
                       f"in {_MAX_TRIES} tries (its text space is too small)")


def generated_classification(family: str | TaskFamily, *, split: str, num_examples: int,
                             seed: int = 0) -> ClassificationData:
    """`num_examples` examples of one family's split as a dataset named "gen/<family>"."""
    fam = _resolve(family)
    _check(fam, split, seed)
    if not isinstance(num_examples, (int, np.integer)) or num_examples < 0:
        raise ValueError(f"generated family {fam.name!r}: num_examples must be an int >= 0, got {num_examples!r}")
    examples = tuple(generate_example(fam, split=split, seed=seed, index=i) for i in range(num_examples))
    return ClassificationData(name=f"gen/{fam.name}", split=split, examples=examples, label_names=fam.label_names,
                              instruction=fam.instruction, task_type=fam.task_type)


def _options(labels: Sequence[str]) -> str:
    return "OPTIONS:\n" + "\n".join(f"- {name}" for name in labels)


def generated_instruction_data(*, seed: int = 0, num_examples: int,
                               families: Iterable[str | TaskFamily] = TUNING_FAMILIES) -> GenerativeData:
    """Instruction-tuning pairs from the families' train splits: the stand-in for Flan data.

    Each prompt is "<instruction>\\n\\n<text>" with the natural label as target; a third of the prompts
    also list the options and a third put 1-3 answered exemplars of the same family first.
    """
    fams = tuple(_resolve(f) for f in families)
    if not fams:
        raise ValueError("generated_instruction_data: families is empty")
    for fam in fams:
        _check(fam, "train", seed)
    if not isinstance(num_examples, (int, np.integer)) or num_examples < 0:
        raise ValueError(f"generated_instruction_data: num_examples must be an int >= 0, got {num_examples!r}")
    pairs = []
    for i in range(num_examples):
        rng = _example_rng("instruction", seed, i)
        fam = fams[int(rng.integers(len(fams)))]
        style = int(rng.integers(3))
        shots = int(rng.integers(1, 4)) if style == 2 else 0
        indices = sorted(set(rng.integers(2**40, size=shots + 1).tolist()))
        exs = [generate_example(fam, split="train", seed=seed, index=int(j)) for j in indices]
        query = exs[-1]
        parts = [fam.instruction]
        parts += [f"{ex.text}\nAnswer: {fam.label_names[ex.label]}" for ex in exs[:-1]]
        parts.append(f"{query.text}\nAnswer:" if shots else query.text)
        if style == 1:
            parts.append(_options(fam.label_names))
        pairs.append(TextPair(inputs="\n\n".join(parts), targets=fam.label_names[query.label]))
    return GenerativeData(name="gen/instructions", split="train", examples=tuple(pairs), task_type="instruction")

"""The embedded task families: small text-classification tasks whose label is a deterministic rule of
the text (a lexicon word, a number's property, a count, an order), each with natural labels and an
instruction. They stand in for the paper's 22 tuning and 11 evaluation datasets in the laptop-sized
`train` / `eval` defaults (the demo's reproduction uses lexicons.py).

A family's `generate(rng, label)` writes a text whose label is `label`, so callers balance classes
exactly. This module holds the tuning families and the text helpers; `symbol_tuning.data.embedded.datasets` holds
the held-out evaluation families and turns families into datasets.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

Generator = Callable[[np.random.Generator, int], str]


@dataclasses.dataclass(frozen=True)
class TaskFamily:
    """One generated task: natural label names, its instruction, a task type and a text generator."""

    name: str
    label_names: tuple[str, ...]
    instruction: str
    task_type: str
    generate: Generator = dataclasses.field(repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def register(registry: list[TaskFamily], name: str, task_type: str, labels: str, instruction: str):
    """Decorator: add a generator to `registry` as a family; `labels` are "|"-separated."""
    def add(fn: Generator) -> Generator:
        registry.append(TaskFamily(name, tuple(labels.split("|")), instruction, task_type, fn))
        return fn
    return add


def words(text: str) -> tuple[str, ...]:
    """A word list from one space-separated string."""
    return tuple(text.split())


def phrases(text: str) -> tuple[str, ...]:
    """A phrase list from one "|"-separated string."""
    return tuple(p.strip() for p in text.split("|"))


def pick(rng: np.random.Generator, seq: Sequence):
    """One element of `seq` (faster than rng.choice on a Python sequence)."""
    return seq[int(rng.integers(len(seq)))]


def sample(rng: np.random.Generator, seq: Sequence, k: int) -> list:
    """`k` distinct elements of `seq` in random order."""
    return [seq[i] for i in rng.permutation(len(seq))[:k]]


def randint(rng: np.random.Generator, lo: int, hi: int) -> int:
    """An integer in [lo, hi]."""
    return int(rng.integers(lo, hi + 1))


def clock(rng: np.random.Generator) -> str:
    """A time of day such as "7:35" (a label-free detail that widens a family's text space)."""
    return f"{randint(rng, 1, 12)}:{5 * randint(rng, 0, 11):02d}"


_TUNING: list[TaskFamily] = []

NAMES_F = words("Mary Anna Emma Sara Julia Lucy Olivia Nora Alice Grace Maya Rosa")
NAMES_M = words("John Peter David Tom Mark Paul James Leo Omar Hugo Ivan Sam")
NAMES = NAMES_F + NAMES_M
THINGS = words("apples books coins stones cups pencils marbles shells cards keys buttons boxes")
NOUNS = words("garden window river pencil mirror blanket ladder orange island candle engine rocket "
              "umbrella elephant anchor igloo oven acorn tunnel basket wallet violin harbor meadow "
              "eagle octopus owl ink echo arrow uncle ember idea otter")

# ---------------------------------------------------------------- tuning families: sentiment
MOVIE_POS = words("brilliant moving delightful gripping superb charming hilarious stunning wonderful touching")
MOVIE_NEG = words("dull boring clumsy tedious awful predictable lifeless messy forgettable painful")


@register(_TUNING, "movie_sentiment", "sentiment", "negative|positive",
          "Is the sentiment of this movie review positive or negative?")
def _movie(rng, label):
    film = pick(rng, words("film movie sequel thriller comedy drama documentary remake cartoon western"))
    adj = pick(rng, MOVIE_POS if label else MOVIE_NEG)
    opener = pick(rng, phrases("Honestly,|I thought|Overall,|In my view,|Frankly,|My friends said|Last night,"))
    span = pick(rng, phrases("start to finish|every scene|all two hours|even the ending"))
    return f"{opener} the {film} by {pick(rng, NAMES)} was {adj}, {span}."


FOOD_POS = words("delicious tasty fresh generous excellent lovely perfect amazing")
FOOD_NEG = words("bland cold greasy stale overpriced soggy burnt disgusting")


@register(_TUNING, "restaurant_sentiment", "sentiment", "negative|positive",
          "Does this restaurant review express a positive or a negative opinion?")
def _restaurant(rng, label):
    dish = pick(rng, words("soup pasta pizza salad curry burger noodles steak dessert coffee bread"))
    place = pick(rng, phrases("Luigi's|the corner cafe|Golden Dragon|Blue Bistro|the diner|Casa Rosa|Noodle Bar"))
    return (f"Table {randint(rng, 1, 60)}: the {dish} at {place} was {pick(rng, FOOD_POS if label else FOOD_NEG)} "
            f"on {pick(rng, words('Monday Tuesday Friday Saturday Sunday'))} night.")


PLAIN_POS = words("good nice great fun pleasant")
PLAIN_NEG = words("bad awful terrible poor boring")


@register(_TUNING, "negated_sentiment", "sentiment", "negative|positive",
          "Taking negation into account, is the speaker's opinion positive or negative?")
def _negated(rng, label):
    negate = bool(rng.integers(2))
    adj = pick(rng, PLAIN_POS if label != negate else PLAIN_NEG)
    thing = pick(rng, words("trip party meeting concert game class weekend show lecture hike"))
    return f"At {clock(rng)} {pick(rng, NAMES)} said the {thing} was {'not ' if negate else ''}{adj}."


EMOTIONS = (words("happy joyful glad thrilled cheerful delighted"),
            words("angry furious annoyed irritated mad outraged"),
            words("sad gloomy heartbroken miserable lonely unhappy"),
            words("scared afraid terrified nervous frightened anxious"))


@register(_TUNING, "emotion", "sentiment", "joy|anger|sadness|fear", "Which emotion does the speaker express?")
def _emotion(rng, label):
    event = pick(rng, phrases("the letter arrived|my brother called|the lights went out|we got home|"
                              "the results came in|the train stopped|the door opened|the phone rang"))
    return f"{pick(rng, NAMES)} felt so {pick(rng, EMOTIONS[label])} when {event} at {clock(rng)}."


# ---------------------------------------------------------------- tuning families: topic
ANIMALS = words("dog cat horse rabbit tiger lion sheep goat donkey camel monkey bear fox deer")
VEHICLES = words("car bus truck bicycle tractor van motorcycle scooter taxi tram jeep lorry minivan")


@register(_TUNING, "animal_or_vehicle", "topic", "animal|vehicle", "Does the sentence mention an animal or a vehicle?")
def _animal_vehicle(rng, label):
    where = pick(rng, phrases("near the river|on the road|by the barn|outside the school|at the park|"
                              "in the village|behind the shop"))
    return f"{pick(rng, NAMES)} saw a {pick(rng, VEHICLES if label else ANIMALS)} {where} around {clock(rng)}."


NEWS = (words("striker goalkeeper match league coach tournament referee championship playoff stadium"),
        words("senator election parliament minister vote campaign governor treaty ballot congress"),
        words("shares profits market investors merger startup revenue bank stocks earnings"))


@register(_TUNING, "news_topic", "topic", "sports|politics|business",
          "Is this news headline about sports, politics or business?")
def _news(rng, label):
    a, b = sample(rng, NEWS[label], 2)
    day = pick(rng, words("Monday Tuesday Thursday Friday"))
    return f"Headline {randint(rng, 1, 999)}: the {a} and the {b} dominate {day}'s news."


FRUITS = words("apple banana cherry mango peach pear plum grape lemon melon kiwi orange apricot")
VEGETABLES = words("carrot potato onion cabbage spinach pea broccoli turnip leek celery radish lettuce beet")


@register(_TUNING, "fruit_or_vegetable", "topic", "fruit|vegetable",
          "Is the food in the sentence a fruit or a vegetable?")
def _fruit_veg(rng, label):
    return (f"At {clock(rng)} {pick(rng, NAMES)} put one {pick(rng, VEGETABLES if label else FRUITS)} in the "
            f"{pick(rng, words('basket bag bowl box cart'))} on shelf {randint(rng, 1, 9)}.")


SEASONS = (phrases("snow|frost|sleds|mittens|icicles|scarves"),
           phrases("blossoms|tulips|lambs|spring showers|buds|nests"),
           phrases("beach|sunscreen|heatwave|swimming|ice cream|sandals"),
           phrases("falling leaves|harvest|acorns|pumpkins|rakes|chestnuts"))


@register(_TUNING, "season", "topic", "winter|spring|summer|autumn", "Which season does the sentence describe?")
def _season(rng, label):
    a, b = sample(rng, SEASONS[label], 2)
    when = pick(rng, words("week month holiday trip visit"))
    return f"We remember the {a} and the {b} of that {when} in {randint(rng, 1900, 2024)}."


INDOORS = words("kitchen bedroom library office basement hallway classroom attic bathroom gym cellar lobby")
OUTDOORS = words("forest beach meadow garden mountain desert field park valley jungle orchard vineyard")


@register(_TUNING, "indoors_or_outdoors", "topic", "indoors|outdoors", "Does the scene take place indoors or outdoors?")
def _indoor(rng, label):
    place = pick(rng, OUTDOORS if label else INDOORS)
    return f"{pick(rng, NAMES)} and {pick(rng, NAMES)} waited in the {place} for {randint(rng, 2, 59)} minutes."


# ---------------------------------------------------------------- tuning families: nli, paraphrase
COLORS = words("red blue green yellow black white purple orange pink brown gray")


@register(_TUNING, "color_entailment", "nli", "entailment|contradiction",
          "Does the premise entail or contradict the hypothesis?")
def _color_nli(rng, label):
    noun = pick(rng, words("ball car door hat shirt cup kite bike box chair lamp bag"))
    c1, c2 = sample(rng, COLORS, 2)
    premise = f"The {noun} {pick(rng, NAMES)} got in {randint(rng, 1950, 2024)} is {c1}."
    return f"Premise: {premise} Hypothesis: The {noun} is {c2 if label else c1}."


@register(_TUNING, "quantity_entailment", "nli", "yes|no",
          "Given the premise, is the hypothesis about the quantity true?")
def _quantity_nli(rng, label):
    n, m = sorted(sample(rng, range(1, 200), 2))
    have, claim = (n, m) if label else (m, n)  # "more than <claim>" holds iff have > claim
    thing = pick(rng, THINGS)
    return (f"Premise: There are {have} {thing} in the room. "
            f"Hypothesis: There are more than {claim} {thing} in the room.")


SYNONYMS = (("big", "large"), ("small", "tiny"), ("fast", "quick"), ("happy", "glad"), ("smart", "clever"),
            ("angry", "mad"), ("rich", "wealthy"), ("sick", "ill"), ("difficult", "hard"), ("quiet", "silent"))
ANTONYMS = (("big", "small"), ("fast", "slow"), ("happy", "sad"), ("rich", "poor"), ("hard", "easy"), ("hot", "cold"),
            ("quiet", "loud"), ("old", "young"), ("clean", "dirty"), ("strong", "weak"))


@register(_TUNING, "synonym_paraphrase", "paraphrase", "same|different", "Do the two sentences mean the same thing?")
def _synonym(rng, label):
    a, b = pick(rng, ANTONYMS if label else SYNONYMS)
    if rng.integers(2):
        a, b = b, a
    who, when = pick(rng, NAMES), f"on day {randint(rng, 1, 300)}"
    return f"Sentence 1: {who} is very {a} {when}. Sentence 2: {who} is very {b} {when}."


NUMBER_WORDS = words("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                     "sixteen seventeen eighteen nineteen twenty")


@register(_TUNING, "number_word_paraphrase", "paraphrase", "same|different",
          "Do both sentences state the same amount?")
def _number_words(rng, label):
    n = randint(rng, 2, 20)
    m = n if not label else pick(rng, [k for k in range(2, 21) if k != n])
    who, thing = pick(rng, NAMES), pick(rng, THINGS)
    room = randint(rng, 1, 99)
    return f"First: {who} has {n} {thing} in room {room}. Second: {who} has {NUMBER_WORDS[m]} {thing} in room {room}."


# ---------------------------------------------------------------- tuning: commonsense, coreference
EVENT_PAIRS = (("buying the ticket", "boarding the train"), ("planting the seeds", "harvesting the crop"),
               ("waking up", "eating breakfast"), ("mixing the dough", "baking the bread"),
               ("writing the letter", "mailing the letter"), ("washing the clothes", "drying the clothes"),
               ("boiling the water", "making the tea"), ("studying", "taking the exam"),
               ("opening the door", "walking inside"), ("catching the fish", "cooking the fish"))


@register(_TUNING, "event_order", "commonsense", "first|second",
          "Which event usually happens first, the first or the second?")
def _event_order(rng, label):
    early, late = pick(rng, EVENT_PAIRS)
    a, b = (late, early) if label else (early, late)
    return f"{pick(rng, NAMES)} is {a} and {b} on day {randint(rng, 1, 300)}."


SIZE_ORDER = words("ant bee mouse apple cat dog bicycle horse car elephant bus house whale ship mountain")


@register(_TUNING, "bigger_object", "commonsense", "first|second", "Which is bigger, the first thing or the second?")
def _bigger(rng, label):
    i, j = sorted(sample(rng, range(len(SIZE_ORDER)), 2))
    a, b = (SIZE_ORDER[j], SIZE_ORDER[i]) if not label else (SIZE_ORDER[i], SIZE_ORDER[j])
    return f"Question {randint(rng, 1, 500)}: compare the {a} with the {b}."


@register(_TUNING, "pronoun_reference", "coreference", "first|second",
          "Does the pronoun refer to the first or the second person named?")
def _pronoun(rng, label):
    she, he = pick(rng, NAMES_F), pick(rng, NAMES_M)
    first_female = bool(rng.integers(2))
    first, second = (she, he) if first_female else (he, she)
    pronoun = "she" if first_female != bool(label) else "he"
    verb = pick(rng, phrases("was tired|was late|won the prize|felt sick|was hungry|had a cold|lost the keys"))
    return f"{first} called {second} at {clock(rng)} because {pronoun} {verb}."


# ---------------------------------------------------------------- tuning families: misc rules
@register(_TUNING, "number_parity", "misc", "even|odd", "Is the number in the sentence even or odd?")
def _parity(rng, label):
    n = 2 * randint(rng, 0, 4999) + label
    return f"There are {n} {pick(rng, THINGS)} in the {pick(rng, words('box drawer jar bag chest'))}."


@register(_TUNING, "above_fifty", "misc", "below|above", "Is the score below or above fifty?")
def _above_fifty(rng, label):
    n = randint(rng, 51, 100) if label else randint(rng, 0, 49)
    game = pick(rng, words("quiz game test match round"))
    return f"{pick(rng, NAMES)} scored {n} points in the {game} on day {randint(rng, 1, 99)}."


@register(_TUNING, "larger_number", "misc", "first|second", "Which number is larger, the first or the second?")
def _larger(rng, label):
    a, b = sample(rng, range(1000), 2)
    big, small = max(a, b), min(a, b)
    return f"Compare {small if label else big} and {big if label else small}."


@register(_TUNING, "addition_check", "misc", "correct|incorrect", "Is the addition correct or incorrect?")
def _addition(rng, label):
    a, b = randint(rng, 0, 60), randint(rng, 0, 60)
    off = int(pick(rng, (1, 2, 3))) * (1 if a + b < 3 or rng.integers(2) else -1) if label else 0
    return f"Claim {randint(rng, 1, 99)}: {a} + {b} = {a + b + off}"


@register(_TUNING, "mentions_color", "misc", "yes|no", "Does the sentence mention a color?")
def _mentions_color(rng, label):
    adj = pick(rng, words("old new wooden heavy tiny broken shiny soft round plastic") if label else COLORS)
    noun = pick(rng, words("cup chair lamp book bag hat box kite ball car"))
    place = pick(rng, words("table shelf floor desk roof bench"))
    return f"The {adj} {noun} is on the {place} next to {pick(rng, NAMES)} at {clock(rng)}."


WORDS = words("river stone quiet paper garden little yellow window summer silver mountain cloud coffee table "
              "music forest letter market winter bright green salt candle rabbit morning orange tiger bottle")


@register(_TUNING, "sentence_length", "misc", "short|long", "Is the sentence short or long?")
def _length(rng, label):
    tokens = sample(rng, WORDS, randint(rng, 9, 13) if label else randint(rng, 3, 5))
    return " ".join(tokens).capitalize() + "."


VOWEL_WORDS = words("apple orange umbrella island eagle owl engine oven igloo ink echo arrow acorn uncle otter "
                    "anchor idea")
CONSONANT_WORDS = words("banana candle garden mirror ladder rocket pencil basket tunnel wallet violin harbor "
                        "meadow table")


@register(_TUNING, "starts_with_vowel", "misc", "vowel|consonant",
          "Does the quoted word start with a vowel or a consonant?")
def _vowel(rng, label):
    word = pick(rng, CONSONANT_WORDS if label else VOWEL_WORDS)
    return f"{pick(rng, NAMES)} read the word '{word}' on page {randint(rng, 1, 999)}."


@register(_TUNING, "capitalized_word", "misc", "yes|no", "Is one of the words written in capital letters?")
def _capitals(rng, label):
    tokens = sample(rng, WORDS, randint(rng, 5, 8))
    if not label:
        k = int(rng.integers(len(tokens)))
        tokens[k] = tokens[k].upper()
    return " ".join(tokens) + "."


@register(_TUNING, "question_or_statement", "misc", "question|statement", "Is this sentence a question or a statement?")
def _question(rng, label):
    who, obj = pick(rng, NAMES), pick(rng, words("door letter car window cake song map"))
    if label:
        return f"{who} {pick(rng, words('opened painted fixed found wrote moved'))} the {obj} at {clock(rng)}."
    verb = pick(rng, words("open paint fix find write move"))
    return f"{pick(rng, words('Why When Where How'))} did {who} {verb} the {obj} at {clock(rng)}?"


@register(_TUNING, "singular_or_plural", "misc", "singular|plural",
          "Is the subject of the sentence singular or plural?")
def _plural(rng, label):
    noun = pick(rng, words("dog bird teacher farmer student car tree friend neighbor robot"))
    verb = pick(rng, (("is", "are"), ("was", "were"), ("has been", "have been")))
    state = pick(rng, words("outside ready here asleep busy gone"))
    return f"The {noun}{'s' if label else ''} {verb[label]} {state} in room {randint(rng, 1, 999)}."


@register(_TUNING, "long_word", "misc", "yes|no", "Does the quoted word have more than six letters?")
def _long_word(rng, label):
    pool = [w for w in NOUNS + WORDS if (len(w) > 6) != bool(label)]
    return f"Spell '{pick(rng, pool)}' for {pick(rng, NAMES)} {randint(rng, 2, 9)} times before {clock(rng)}."


TENSES = (("walks", "walked"), ("plays", "played"), ("cooks", "cooked"), ("paints", "painted"), ("dances", "danced"),
          ("works", "worked"), ("waits", "waited"), ("writes", "wrote"), ("sings", "sang"), ("swims", "swam"),
          ("eats", "ate"), ("sleeps", "slept"))


@register(_TUNING, "verb_tense", "misc", "past|present", "Is the sentence in the past or the present tense?")
def _tense(rng, label):
    verb = pick(rng, TENSES)[1 - label]
    how = pick(rng, phrases("with a friend|in the evening|near the lake|all alone|for fun"))
    return f"{pick(rng, NAMES)} {verb} {how} for {randint(rng, 2, 99)} minutes."


@register(_TUNING, "increasing_order", "misc", "yes|no", "Are the numbers listed in increasing order?")
def _increasing(rng, label):
    nums = sorted(sample(rng, range(1, 100), randint(rng, 3, 6)))
    if label:
        while nums == sorted(nums):
            nums = [int(x) for x in rng.permutation(nums)]
    return "Numbers: " + ", ".join(str(x) for x in nums)


SPAM = phrases("WIN a free prize now|click this link today|claim your cash reward|limited offer just for you|"
               "you are our lucky winner|cheap loans approved instantly|free gift card inside")
HAM = phrases("see you at lunch|the meeting moved to three|can you send the notes|happy birthday to your mom|"
              "thanks for dinner last night|call me when you land|the kids are asleep")


@register(_TUNING, "spam_message", "misc", "spam|not spam", "Is this text message spam?")
def _spam(rng, label):
    a, b = sample(rng, HAM if label else SPAM, 2)
    return f"Message {randint(rng, 100, 999)}: {a}, {b}."


@register(_TUNING, "repeated_word", "misc", "yes|no", "Does any word appear twice in the list?")
def _repeated(rng, label):
    tokens = sample(rng, WORDS, randint(rng, 5, 7))
    if not label:
        i, j = sample(rng, range(len(tokens)), 2)
        tokens[j] = tokens[i]
    return "List: " + " ".join(tokens)


TUNING_FAMILIES: tuple[TaskFamily, ...] = tuple(_TUNING)

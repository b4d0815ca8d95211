"""Sampling responses of mixed quality: the "writers" of the demo's data.

A response is built from independent quality knobs, one per gold attribute, each
good with a probability near one half (`QUALITY_RATES`). So every combination of
good and bad attributes shows up, the data's mean gold reward is about half the
maximum, and a policy that imitates it (the SFT model) samples the best response
only rarely but not never: PPO has something to find and a long way to climb.

`build_response(topic, seed, knobs)` is a pure function, and each part of the
sentence (subject, structure, adjectives, other words, slip, ending) draws from
its own stream of the seed. Two responses with the same seed and knobs that
differ in one place differ only where that knob acts: "the cat is warm and kind."
and "it is warm and kind." (on_topic flipped). Such revision pairs show a reward
model the effect of one attribute at a time (see generator.py).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, fields, replace
from typing import Dict, List, Optional

from . import vocabulary as V
from .gold import LENGTH_MAX, LENGTH_MIN, is_fluent

# Probability that each knob is good. Sentiment has three moods: all adjectives
# positive, all negative, or each a coin flip.
QUALITY_RATES: Dict[str, float] = {
    "on_topic": 0.5,
    "length": 0.5,
    "ending": 0.5,
    "no_repeat": 0.5,
    # Mostly fluent: the SFT model should learn the language first; the 30%
    # broken sentences teach the reward model what word salad is worth.
    "fluency": 0.7,
}
MOOD_RATES: Dict[str, float] = {"positive": 0.4, "mixed": 0.2, "negative": 0.4}
# An off-topic response names no topic at all ("it is warm."), or, less often,
# another topic, which only a reward model that compares it with the prompt can
# tell. Kept a minority: a ~1M-parameter reward model learns that comparison slowly
# (see gold.py), and the SFT model learns to copy the topic faster when a
# determiner is mostly followed by the prompt's topic.
OTHER_TOPIC_RATE = 0.3
# Chance that an adjective slot takes a neutral adjective, whatever the mood.
NEUTRAL_RATE = 0.15
INTENSIFIER_RATE = 0.3
CLAUSE_COUNT_RATES: Dict[int, float] = {1: 0.5, 2: 0.5}
ADJECTIVES_PER_CLAUSE_RATES: Dict[int, float] = {1: 0.35, 2: 0.4, 3: 0.25}

# Grammar slips of a disfluent response. "glue" (two function words without the
# space, "andit") and "stutter" ("the the cat") are the kind of token-level
# garbage a policy drifts into under RL; showing them to the reward model makes
# it less blind to them.
SLIPS = ("drop_verb", "dangling_and", "missing_and", "swap_subject", "glue", "stutter")

_STREAMS = ("subject", "structure", "adjectives", "words", "slip", "ending")


@dataclass(frozen=True)
class Knobs:
    """Which attributes a sampled response is meant to get right."""
    mood: str
    on_topic: bool
    length: bool
    ending: bool
    no_repeat: bool
    fluency: bool


def _choice(rng: random.Random, rates: Dict) -> object:
    keys = list(rates)
    return rng.choices(keys, weights=[rates[k] for k in keys])[0]


def sample_knobs(rng: random.Random) -> Knobs:
    """Independent draws of every quality knob."""
    return Knobs(mood=_choice(rng, MOOD_RATES),
                 **{k: rng.random() < p for k, p in QUALITY_RATES.items()})


def edit_knobs(knobs: Knobs, rng: random.Random, flip_rate: float = 0.25) -> Knobs:
    """`knobs` with each knob flipped with probability `flip_rate`, at least one
    (a flipped mood becomes one of the two other moods)."""
    names = [f.name for f in fields(Knobs)]
    flipped = [n for n in names if rng.random() < flip_rate] or [rng.choice(names)]
    changes = {}
    for name in flipped:
        if name == "mood":
            changes[name] = rng.choice([m for m in MOOD_RATES if m != knobs.mood])
        else:
            changes[name] = not getattr(knobs, name)
    return replace(knobs, **changes)


def _clause_length(n_adjectives: int, n_intensifiers: int) -> int:
    # verb + adjectives + intensifiers + the "and"s between adjectives
    return 1 + n_adjectives + n_intensifiers + (n_adjectives - 1)


def _structure(rng: random.Random, subject_words: int, knobs: Knobs) -> List[List[bool]]:
    """Intensifier flags of each adjective, per clause, redrawn until the length
    (and, for a planned repeat, the number of adjectives) fits the knobs."""
    while True:
        clauses = []
        for _ in range(_choice(rng, CLAUSE_COUNT_RATES)):
            n_adj = _choice(rng, ADJECTIVES_PER_CLAUSE_RATES)
            clauses.append([rng.random() < INTENSIFIER_RATE for _ in range(n_adj)])
        length = subject_words + 2 * (len(clauses) - 1) + sum(
            _clause_length(len(c), sum(c)) for c in clauses)
        n_adjectives = sum(len(c) for c in clauses)
        if knobs.length != (LENGTH_MIN <= length <= LENGTH_MAX):
            continue
        if not knobs.no_repeat and n_adjectives < 2:
            continue
        return clauses


def _adjectives(rng: random.Random, n: int, knobs: Knobs) -> List[str]:
    """n distinct adjectives following the mood; one repeated if no_repeat is bad.
    The same draws are made whatever the knobs, so a flipped mood changes the
    adjectives' valence and little else."""
    used: set = set()
    adjectives = []
    for _ in range(n):
        neutral, coin, pick = rng.random(), rng.random(), rng.random()
        if neutral < NEUTRAL_RATE:
            pool = V.NEUTRAL_ADJECTIVES
        elif knobs.mood == "positive" or (knobs.mood == "mixed" and coin < 0.5):
            pool = V.POSITIVE_ADJECTIVES
        else:
            pool = V.NEGATIVE_ADJECTIVES
        available = [w for w in pool if w not in used]
        word = available[int(pick * len(available))]
        used.add(word)
        adjectives.append(word)
    first, second = rng.random(), rng.random()
    if not knobs.no_repeat:
        i = int(first * (n - 1))
        j = i + 1 + int(second * (n - 1 - i))
        adjectives[j] = adjectives[i]
    return adjectives


def _subject(rng: random.Random, topic: str, knobs: Knobs) -> List[str]:
    determiner, about_other, other = (rng.choice(V.DETERMINERS), rng.random(),
                                      rng.choice([t for t in V.TOPICS if t != topic]))
    if knobs.on_topic:
        return [determiner, topic]
    if about_other < OTHER_TOPIC_RATE:  # about something else
        return [determiner, other]
    return [V.PRONOUN]  # never names what it describes


def _slip(rng: random.Random, words: List[str]) -> List[str]:
    """A typical slip that breaks the grammar (the result never parses)."""
    words = list(words)
    while True:
        slip = rng.choice(SLIPS)
        if slip == "drop_verb":
            i = next(k for k, w in enumerate(words) if w in V.VERBS)
            return words[:i] + words[i + 1:]
        if slip == "dangling_and":
            return words + [V.CONJUNCTION]
        if slip == "missing_and":
            # an "and" between two adjectives (not one that opens a new clause)
            spots = [k for k, w in enumerate(words)
                     if w == V.CONJUNCTION and words[k + 1] != V.PRONOUN]
            if spots:
                k = rng.choice(spots)
                return words[:k] + words[k + 1:]
        if slip == "swap_subject" and words[0] in V.DETERMINERS:
            return [words[1], words[0]] + words[2:]
        if slip == "glue":
            # only function words, so the topic and the adjectives stay readable
            spots = [k for k in range(len(words) - 1)
                     if words[k] in V.FUNCTION_WORDS and words[k + 1] in V.FUNCTION_WORDS]
            if spots:
                k = rng.choice(spots)
                return words[:k] + [words[k] + words[k + 1]] + words[k + 2:]
        if slip == "stutter":
            spots = [k for k, w in enumerate(words) if w in V.FUNCTION_WORDS]
            k = rng.choice(spots)
            return words[:k + 1] + words[k:]


def build_response(topic: str, seed: int, knobs: Knobs) -> str:
    """The response to a prompt about `topic` drawn from `seed`, matching `knobs`."""
    streams = {name: random.Random((seed << 3) | i) for i, name in enumerate(_STREAMS)}
    subject = _subject(streams["subject"], topic, knobs)
    clauses = _structure(streams["structure"], len(subject), knobs)
    adjectives = iter(_adjectives(streams["adjectives"], sum(len(c) for c in clauses), knobs))
    pick = streams["words"]
    words = list(subject)
    for c, intensified in enumerate(clauses):
        if c > 0:
            words += [V.CONJUNCTION, V.PRONOUN]
        words.append(pick.choice(V.VERBS))
        for a, has_intensifier in enumerate(intensified):
            if a > 0:
                words.append(V.CONJUNCTION)
            if has_intensifier:
                words.append(pick.choice(V.INTENSIFIERS))
            words.append(next(adjectives))
    if not knobs.fluency:
        words = _slip(streams["slip"], words)
        assert not is_fluent(words), words
    ending = "." if knobs.ending else streams["ending"].choice(["!", ""])
    return " ".join(words) + ending


def sample_response(topic: str, rng: random.Random, knobs: Optional[Knobs] = None) -> str:
    """One response to a prompt about `topic`, built to match `knobs` (drawn from
    `rng` if None)."""
    if knobs is None:
        knobs = sample_knobs(rng)
    return build_response(topic, rng.getrandbits(64), knobs)

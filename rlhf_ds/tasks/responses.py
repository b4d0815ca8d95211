"""Sampling responses of mixed quality: the "writers" of the demo's SFT data.

A response is built from independent quality knobs, one per gold attribute, each
good with a probability near one half (`QUALITY_RATES`). So every combination of
good and bad attributes shows up, the data's mean gold reward is about half the
maximum, and a policy that imitates it (the SFT model) samples the best response
only rarely but not never: PPO has something to find and a long way to climb.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, List

from . import vocabulary as V
from .gold_reward import LENGTH_MAX, LENGTH_MIN, is_fluent

# Probability that each knob is good. Sentiment has three moods: all adjectives
# positive, all negative, or each a coin flip.
QUALITY_RATES: Dict[str, float] = {
    "on_topic": 0.5,
    "length": 0.5,
    "ending": 0.5,
    "no_repeat": 0.5,
    # Mostly fluent: the SFT model should learn the language first; the 30%
    # corrupted sentences teach the reward model what word salad is worth.
    "fluency": 0.7,
}
MOOD_RATES: Dict[str, float] = {"positive": 0.4, "mixed": 0.2, "negative": 0.4}
# Chance that an adjective slot takes a neutral adjective, whatever the mood.
NEUTRAL_RATE = 0.15
INTENSIFIER_RATE = 0.3
CLAUSE_COUNT_RATES: Dict[int, float] = {1: 0.5, 2: 0.5}
ADJECTIVES_PER_CLAUSE_RATES: Dict[int, float] = {1: 0.35, 2: 0.4, 3: 0.25}


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


def _clause_length(n_adjectives: int, n_intensifiers: int) -> int:
    # verb + adjectives + intensifiers + the "and"s between adjectives
    return 1 + n_adjectives + n_intensifiers + (n_adjectives - 1)


def _sample_structure(rng: random.Random, subject_words: int, knobs: Knobs):
    """Adjective counts and intensifier flags per clause, redrawn until the length
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


def _sample_adjectives(rng: random.Random, n: int, knobs: Knobs) -> List[str]:
    """n distinct adjectives following the mood; one repeated if no_repeat is bad."""
    used: set = set()
    adjectives = []
    for _ in range(n):
        if rng.random() < NEUTRAL_RATE:
            pool = V.NEUTRAL_ADJECTIVES
        elif knobs.mood == "positive" or (knobs.mood == "mixed" and rng.random() < 0.5):
            pool = V.POSITIVE_ADJECTIVES
        else:
            pool = V.NEGATIVE_ADJECTIVES
        word = rng.choice([w for w in pool if w not in used])
        used.add(word)
        adjectives.append(word)
    if not knobs.no_repeat:
        i, j = sorted(rng.sample(range(n), 2))
        adjectives[j] = adjectives[i]
    return adjectives


def _subject(rng: random.Random, topic: str, knobs: Knobs) -> List[str]:
    if knobs.on_topic:
        return [rng.choice(V.DETERMINERS), topic]
    if rng.random() < 0.6:  # about something else
        other = rng.choice([t for t in V.TOPICS if t != topic])
        return [rng.choice(V.DETERMINERS), other]
    return [V.PRONOUN]  # never names what it describes


def _corrupt(rng: random.Random, words: List[str]) -> List[str]:
    """A typical slip that breaks the grammar (the result never parses)."""
    words = list(words)
    slips = ["drop_verb", "dangling_and", "missing_and", "swap_subject"]
    while True:
        slip = rng.choice(slips)
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


def sample_response(topic: str, rng: random.Random, knobs: Knobs = None) -> str:
    """One response to a prompt about `topic`, built to match `knobs` (sampled if None)."""
    if knobs is None:
        knobs = sample_knobs(rng)
    subject = _subject(rng, topic, knobs)
    clauses = _sample_structure(rng, len(subject), knobs)
    adjectives = iter(_sample_adjectives(rng, sum(len(c) for c in clauses), knobs))
    words = list(subject)
    for c, intensified in enumerate(clauses):
        if c > 0:
            words += [V.CONJUNCTION, V.PRONOUN]
        words.append(rng.choice(V.VERBS))
        for a, has_intensifier in enumerate(intensified):
            if a > 0:
                words.append(V.CONJUNCTION)
            if has_intensifier:
                words.append(rng.choice(V.INTENSIFIERS))
            words.append(next(adjectives))
    if not knobs.fluency:
        words = _corrupt(rng, words)
        assert not is_fluent(words), words
    ending = "." if knobs.ending else rng.choice(["!", ""])
    return " ".join(words) + ending

"""Words and prompts of the embedded demo task ("describe the topic").

Everything the task can say lives here, as plain tuples, so that the gold reward,
the data generator and the tokenizer corpus all read the same lists. The lists are
small on purpose: a ~1M-parameter model must learn the whole language from a few
thousand sentences, and every word should be a single BPE token.

The grammar of a well-formed response, in word classes:

    subject  := DETERMINER TOPIC | "it"
    adj_item := [INTENSIFIER] ADJECTIVE
    clause   := VERB adj_item ("and" adj_item)*
    response := subject clause ("and" "it" clause)* "."

e.g. "the cat is very soft and warm and it looks calm." Each adjective belongs to
exactly one of three sentiment classes (positive, negative, neutral).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Tuple

# No topic is also an adjective or a function word, and no topic is a prefix
# ambiguity for the parser (all words are matched whole).
TOPICS: Tuple[str, ...] = (
    "cat", "dog", "bird", "horse", "fish", "river", "lake", "sea",
    "beach", "island", "forest", "garden", "flower", "tree", "mountain", "city",
    "village", "house", "castle", "bridge", "road", "train", "car", "ship",
    "book", "song", "movie", "cake", "coffee", "storm", "winter", "summer",
)

POSITIVE_ADJECTIVES: Tuple[str, ...] = (
    "good", "nice", "lovely", "beautiful", "happy", "bright", "warm", "calm",
    "gentle", "kind", "pleasant", "charming", "wonderful", "friendly", "sweet",
    "clean", "fresh", "cheerful", "elegant", "graceful",
)

NEGATIVE_ADJECTIVES: Tuple[str, ...] = (
    "bad", "ugly", "sad", "dull", "cold", "harsh", "noisy", "dirty", "gloomy",
    "awful", "nasty", "boring", "rude", "grim", "bitter", "dreary", "messy",
    "rotten", "weak", "scary",
)

# Neutral adjectives give the sentences variety without telling the annotator
# anything; they score half (see gold.py), so the best response avoids them.
NEUTRAL_ADJECTIVES: Tuple[str, ...] = (
    "big", "small", "old", "round", "tall", "long", "green", "brown", "wide", "heavy",
)

DETERMINERS: Tuple[str, ...] = ("the", "this", "my")
PRONOUN = "it"
VERBS: Tuple[str, ...] = ("is", "looks", "feels", "seems")
INTENSIFIERS: Tuple[str, ...] = ("very", "so", "quite", "really")
CONJUNCTION = "and"

# Words that may repeat in a good sentence ("it is warm and it is calm"):
# the no-repeat attribute only counts the content words (topics, adjectives, unknown).
FUNCTION_WORDS = frozenset(DETERMINERS + VERBS + INTENSIFIERS + (PRONOUN, CONJUNCTION))

ADJECTIVES: Tuple[str, ...] = POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES + NEUTRAL_ADJECTIVES

# Score of one adjective for the sentiment attribute.
ADJECTIVE_VALENCE: Dict[str, float] = {
    **{w: 1.0 for w in POSITIVE_ADJECTIVES},
    **{w: 0.0 for w in NEGATIVE_ADJECTIVES},
    **{w: 0.5 for w in NEUTRAL_ADJECTIVES},
}

# The user message. "{topic}" is the only slot; the gold reward finds the topic
# again by looking for a topic noun in the prompt, so any phrasing would do. Every
# phrasing ends with the topic, though: the topic token then sits at a fixed
# distance before the response, and a ~1M-parameter model learns to copy it in a
# few hundred steps (with "what is the cat like?" among the phrasings it took
# several times longer).
PROMPT_TEMPLATES: Tuple[str, ...] = (
    "describe the {topic}",
    "tell me about the {topic}",
    "write a sentence about the {topic}",
    "say something about the {topic}",
    "give me a description of the {topic}",
    "what do you think of the {topic}",
)

# One letter per word class, used by the fluency check (a regular expression over
# these letters) and handy when debugging a sample.
WORD_CLASS: Dict[str, str] = {
    **{w: "D" for w in DETERMINERS},
    **{w: "N" for w in TOPICS},
    PRONOUN: "P",
    **{w: "V" for w in VERBS},
    **{w: "I" for w in INTENSIFIERS},
    **{w: "A" for w in ADJECTIVES},
    CONJUNCTION: "C",
}
UNKNOWN_CLASS = "X"


def _check_vocabulary() -> None:
    """Every word has one class and no list repeats a word (a silent overlap would
    make the gold reward ambiguous)."""
    lists = [TOPICS, ADJECTIVES, DETERMINERS, VERBS, INTENSIFIERS, (PRONOUN, CONJUNCTION)]
    words = [w for group in lists for w in group]
    duplicates = sorted({w for w in words if words.count(w) > 1})
    if duplicates:
        raise AssertionError(f"words in two lists: {duplicates}")


_check_vocabulary()


def is_eval_prompt(topic_index: int, template_index: int) -> bool:
    """Whether the (topic, phrasing) pair is held out for evaluation.

    About one pair in five is held out, spread so that every topic and every
    phrasing appears in both splits (each topic keeps 4-5 training phrasings):
    evaluation then measures generalisation to unseen prompts, not unseen words.
    """
    return (topic_index + 2 * template_index) % 5 == 0


@lru_cache(maxsize=None)
def prompt_pairs(split: str) -> Tuple[Tuple[int, int], ...]:
    """(topic_index, template_index) pairs of a split, "train" or "eval", in a fixed order."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    want_eval = split == "eval"
    return tuple((t, p) for t in range(len(TOPICS)) for p in range(len(PROMPT_TEMPLATES))
                 if is_eval_prompt(t, p) == want_eval)


def render_prompt(topic_index: int, template_index: int) -> str:
    """The user message for a (topic, phrasing) pair."""
    return PROMPT_TEMPLATES[template_index].format(topic=TOPICS[topic_index])


def all_words() -> List[str]:
    """Every word a prompt or a response of the task can contain (for the tokenizer)."""
    words = list(WORD_CLASS)
    for template in PROMPT_TEMPLATES:
        words.extend(template.replace("{topic}", "").replace("?", " ").split())
    return sorted(set(words))

"""The gold reward: the "human" whose taste the demo's reward model has to learn.

A response is scored on six attributes, each in [0, 1]; the gold reward is their
weighted sum, so its maximum is exactly `GOLD_REWARD_MAX` (reached by e.g. "the cat
is warm and very gentle."). It reads only the two strings (prompt, response): the
topic is parsed back from the prompt, so prompts read back from a file work, and
the prompt may even carry chat-template markup around the user message.

The weights say what this human cares about, most to least:

- sentiment 0.35: the core preference, and graded (mean valence of the adjectives),
  so the reward model must read every adjective, not one keyword.
- on_topic 0.25: names the asked topic and no other one. It is the only attribute
  that links the response to the prompt: "it is warm." is off topic whatever the
  prompt, but "the dog is warm." is off topic only for a prompt about the cat.
- length 0.15: 6 to 10 words, with partial credit outside, so that neither the
  shortest nor a babbling response wins.
- ending 0.10, fluency 0.10, no_repeat 0.05: style checks that are easy to satisfy
  but together (0.25) keep a degenerate output (no period, word salad, "nice and
  nice") from scoring high even when its adjectives are all positive.

The weights were tuned with the demo's ~1M-parameter reward model trained on 6000
pairs: it learns sentiment, ending, length and on_topic within one or two epochs,
fluency only in part and repetition hardly at all. Giving the slow attributes less
weight keeps its accuracy on the held-out noisy labels at ~0.82 after one epoch and
~0.84 after two (the gold reward itself scores ~0.94), while the gold reward still
punishes what the reward model misses, which is what a PPO run is judged on.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Sequence

from . import vocabulary as V

ATTRIBUTE_WEIGHTS: Dict[str, float] = {
    "sentiment": 0.35,
    "on_topic": 0.25,
    "length": 0.15,
    "ending": 0.10,
    "fluency": 0.10,
    "no_repeat": 0.05,
}
GOLD_REWARD_MAX: float = 1.0

# Length window in words (the final "." is not a word) and the credit lost per
# word outside it: 4 or 12 words still earn half, 2 or 14 nothing.
LENGTH_MIN, LENGTH_MAX, LENGTH_SLOPE = 6, 10, 0.25

_TOPIC_SET = frozenset(V.TOPICS)
_WORD_RE = re.compile(r"[a-z]+")
# subject clause ("and" "it" clause)*, in the letters of vocabulary.WORD_CLASS.
_CLAUSE = r"VI?A(CI?A)*"
_FLUENT_RE = re.compile(rf"^(DN|P){_CLAUSE}(CP{_CLAUSE})*$")


def parse_topic(prompt: str) -> Optional[str]:
    """The topic noun the prompt asks about: the last topic word in it, or None."""
    topics = [w for w in _WORD_RE.findall(prompt.lower()) if w in _TOPIC_SET]
    return topics[-1] if topics else None


def split_response(response: str):
    """(words, ends_with_period) of a response.

    Words are the whitespace-separated pieces left once the final run of
    "." "!" "?" is cut off, lower-cased (the annotator does not care about case). A word that
    still holds punctuation stays as it is and counts as an unknown word.
    """
    text = response.strip()
    body = text.rstrip(".!?")
    # Exactly one "." closes a good response: "!", "..", "?." do not count.
    ends_with_period = text[len(body):] == "."
    return body.lower().split(), ends_with_period


def _sentiment(words: Sequence[str]) -> float:
    # Mean valence: positive 1, neutral 0.5, negative 0; no adjective at all is 0
    # (nothing was described).
    valences = [V.ADJECTIVE_VALENCE[w] for w in words if w in V.ADJECTIVE_VALENCE]
    return sum(valences) / len(valences) if valences else 0.0


def _on_topic(words: Sequence[str], topic: Optional[str]) -> float:
    named = {w for w in words if w in _TOPIC_SET}
    return 1.0 if topic is not None and named == {topic} else 0.0


def _length(words: Sequence[str]) -> float:
    n = len(words)
    distance = max(LENGTH_MIN - n, n - LENGTH_MAX, 0)
    return max(0.0, 1.0 - LENGTH_SLOPE * distance)


def _no_repeat(words: Sequence[str]) -> float:
    content = [w for w in words if w not in V.FUNCTION_WORDS]
    return 1.0 if content and len(set(content)) == len(content) else 0.0


def word_classes(words: Iterable[str]) -> str:
    """One letter per word (see vocabulary.WORD_CLASS), e.g. "DNVIACA"."""
    return "".join(V.WORD_CLASS.get(w, V.UNKNOWN_CLASS) for w in words)


def is_fluent(words: Sequence[str]) -> bool:
    """Whether the words follow the task grammar (see vocabulary.py)."""
    return _FLUENT_RE.match(word_classes(words)) is not None


def _fluency(words: Sequence[str]) -> float:
    return 1.0 if is_fluent(words) else 0.0


def gold_attributes(prompt: str, response: str) -> Dict[str, float]:
    """Each attribute of `response` to `prompt`, in [0, 1] (keys of ATTRIBUTE_WEIGHTS)."""
    words, ends_with_period = split_response(response)
    return {
        "sentiment": _sentiment(words),
        "on_topic": _on_topic(words, parse_topic(prompt)),
        "length": _length(words),
        "ending": 1.0 if ends_with_period else 0.0,
        "no_repeat": _no_repeat(words),
        "fluency": _fluency(words),
    }


def combine_attributes(attributes: Dict[str, float]) -> float:
    """Weighted sum of the attributes: the gold reward, in [0, GOLD_REWARD_MAX]."""
    return sum(ATTRIBUTE_WEIGHTS[k] * attributes[k] for k in ATTRIBUTE_WEIGHTS)


def gold_reward(prompt: str, response: str) -> float:
    """Gold reward of one response, in [0, GOLD_REWARD_MAX]."""
    return combine_attributes(gold_attributes(prompt, response))


def gold_rewards(prompts: Sequence[str], responses: Sequence[str]) -> List[float]:
    """Gold rewards of a batch: `prompts[i]` with `responses[i]`."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [gold_reward(p, r) for p, r in zip(prompts, responses)]


def mean_gold_attributes(prompts: Sequence[str], responses: Sequence[str]) -> Dict[str, float]:
    """Mean of each attribute and of the reward over a batch (for evaluation logs)."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError("need as many responses as prompts, at least one")
    sums = dict.fromkeys(list(ATTRIBUTE_WEIGHTS) + ["gold_reward"], 0.0)
    for p, r in zip(prompts, responses):
        attrs = gold_attributes(p, r)
        attrs["gold_reward"] = combine_attributes(attrs)
        for k, v in attrs.items():
            sums[k] += v
    return {k: v / len(prompts) for k, v in sums.items()}

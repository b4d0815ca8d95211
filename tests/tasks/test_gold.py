"""The gold reward, attribute by attribute, on hand-made responses."""
import math

import pytest

from rlhf_ds.tasks import (ATTRIBUTE_WEIGHTS, GOLD_REWARD_MAX, DescribeTask, gold_attributes,
                           gold_reward, gold_rewards, mean_gold_attributes, parse_topic)
from rlhf_ds.tasks import vocabulary as V

PROMPT = "describe the cat"
BEST = "the cat is warm and very gentle."


def test_weights_sum_to_max():
    assert sum(ATTRIBUTE_WEIGHTS.values()) == pytest.approx(GOLD_REWARD_MAX)
    assert all(w > 0 for w in ATTRIBUTE_WEIGHTS.values())


def test_best_response_reaches_max_exactly():
    attrs = gold_attributes(PROMPT, BEST)
    assert attrs == {k: 1.0 for k in ATTRIBUTE_WEIGHTS}
    assert gold_reward(PROMPT, BEST) == GOLD_REWARD_MAX


def test_max_is_reached_for_every_prompt():
    # One construction that is perfect for any topic: the max is attainable everywhere.
    for split in ("train", "eval"):
        for t, p in V.prompt_pairs(split):
            prompt = V.render_prompt(t, p)
            response = f"my {V.TOPICS[t]} looks bright and it seems so kind."
            assert gold_reward(prompt, response) == GOLD_REWARD_MAX, (prompt, response)


def test_sentiment_is_mean_adjective_valence():
    # warm = 1, cold = 0, big (neutral) = 0.5 -> 0.5; the rest is perfect.
    r = "the cat is warm and cold and big."
    assert gold_attributes(PROMPT, r)["sentiment"] == pytest.approx(0.5)
    assert gold_reward(PROMPT, r) == pytest.approx(1.0 - 0.35 * 0.5)
    assert gold_attributes(PROMPT, "the cat is very ugly and dull.")["sentiment"] == 0.0
    assert gold_attributes(PROMPT, "the cat is big and round.")["sentiment"] == 0.5
    # No adjective at all: nothing was described.
    assert gold_attributes(PROMPT, "the cat is.")["sentiment"] == 0.0


def test_on_topic_needs_the_asked_topic_and_only_it():
    assert gold_attributes(PROMPT, "the dog is warm and very gentle.")["on_topic"] == 0.0
    assert gold_reward(PROMPT, "the dog is warm and very gentle.") == pytest.approx(0.75)
    assert gold_attributes(PROMPT, "it is warm and very gentle.")["on_topic"] == 0.0
    assert gold_attributes(PROMPT, "the cat and the dog are nice.")["on_topic"] == 0.0
    # The same response is on topic for the prompt that asks about the dog.
    assert gold_attributes("tell me about the dog", "the dog is warm.")["on_topic"] == 1.0


@pytest.mark.parametrize("response, expected", [
    ("the cat is warm.", 0.5),                                    # 4 words
    ("the cat is very warm.", 0.75),                              # 5
    ("the cat is warm and kind.", 1.0),                           # 6
    ("the cat is warm and kind and it looks calm.", 1.0),         # 10
    ("the cat is warm and kind and it looks very calm.", 0.75),   # 11
    ("the cat is warm and kind and it looks very calm and so sweet.", 0.0),  # 14
    ("it is warm.", 0.25),                                        # 3
])
def test_length_window_and_slope(response, expected):
    assert gold_attributes(PROMPT, response)["length"] == pytest.approx(expected)


@pytest.mark.parametrize("response, expected", [
    (BEST, 1.0),
    (BEST + "  ", 1.0),                 # surrounding whitespace is not text
    (BEST[:-1], 0.0),                   # no period
    (BEST[:-1] + "!", 0.0),
    (BEST + ".", 0.0),                  # ".." is not a proper ending
    (BEST[:-1] + "!.", 0.0),
])
def test_ending_is_exactly_one_period(response, expected):
    assert gold_attributes(PROMPT, response)["ending"] == expected


def test_no_repeat_counts_content_words_only():
    assert gold_attributes(PROMPT, "the cat is warm and very warm.")["no_repeat"] == 0.0
    # "it" and "is" repeat, which is fine English.
    assert gold_attributes(PROMPT, "the cat is warm and it is gentle.")["no_repeat"] == 1.0
    assert gold_attributes(PROMPT, "the cat is warm and it is very very gentle.")["no_repeat"] == 1.0


@pytest.mark.parametrize("response", [
    "cat the is warm and very gentle.",     # swapped subject
    "the cat warm and very gentle.",        # no verb
    "the cat is warm and.",                 # dangling "and"
    "the cat is warm gentle.",              # missing "and"
    "the cat is very very warm.",           # two intensifiers
    "the cat is warm and fluffy.",          # unknown word
    "the cat is warm, and gentle.",         # punctuation inside
])
def test_fluency_rejects_broken_sentences(response):
    assert gold_attributes(PROMPT, response)["fluency"] == 0.0


@pytest.mark.parametrize("response", [
    BEST,
    "it is warm.",
    "this cat feels kind and it looks really calm and it is sweet.",
    "my cat seems so big and old and gentle.",
])
def test_fluency_accepts_the_grammar(response):
    assert gold_attributes(PROMPT, response)["fluency"] == 1.0


def test_empty_response_scores_zero():
    assert gold_reward(PROMPT, "") == 0.0
    assert gold_reward(PROMPT, "   ") == 0.0


def test_case_does_not_matter():
    assert gold_reward(PROMPT, "The Cat is WARM and very gentle.") == GOLD_REWARD_MAX


def test_parse_topic():
    assert parse_topic("describe the cat") == "cat"
    assert parse_topic("What do you think of the RIVER?") == "river"
    assert parse_topic("tell me about the dog and the cat") == "cat"   # the last one
    assert parse_topic("hello there") is None
    # The prompt may come back with its chat markup.
    assert parse_topic("<|bos|><|user|>describe the lake<|end|><|assistant|>") == "lake"
    assert gold_attributes("hello there", BEST)["on_topic"] == 0.0


def test_batched_helpers_match_single_calls():
    records = DescribeTask(seed=3).sft_records(50)
    prompts = [r["prompt"] for r in records]
    responses = [r["response"] for r in records]
    singles = [gold_reward(p, r) for p, r in zip(prompts, responses)]
    assert gold_rewards(prompts, responses) == singles
    means = mean_gold_attributes(prompts, responses)
    assert means["gold_reward"] == pytest.approx(sum(singles) / len(singles))
    assert set(means) == set(ATTRIBUTE_WEIGHTS) | {"gold_reward"}
    with pytest.raises(ValueError):
        gold_rewards(prompts, responses[:-1])


def test_rewards_of_generated_data_are_in_range():
    task = DescribeTask(seed=1)
    for r in task.sft_records(2000):
        attrs = gold_attributes(r["prompt"], r["response"])
        assert all(0.0 <= v <= 1.0 for v in attrs.values()), (r, attrs)
        g = gold_reward(r["prompt"], r["response"])
        assert 0.0 <= g <= GOLD_REWARD_MAX and not math.isnan(g)

"""The noise model of the annotator: Bradley-Terry pairs, Plackett-Luce rankings."""
import itertools
import math
import random

import pytest

from rlhf_ds.tasks.annotator import (ANNOTATOR_TEMPERATURE, label_agreement_probability,
                                     noisy_ranks, perceived_scores, prefers_first)


def test_zero_temperature_is_the_gold_order():
    rng = random.Random(0)
    assert noisy_ranks([0.2, 0.9, 0.5, 0.1], rng, temperature=0.0) == [2, 0, 1, 3]
    assert noisy_ranks([0.5, 0.5], rng, temperature=0.0) == [0, 1]   # ties: first wins
    assert prefers_first(0.3, 0.2, rng, temperature=0.0)


def test_ranks_are_a_permutation():
    rng = random.Random(1)
    for k in (2, 3, 7):
        for _ in range(50):
            gold = [rng.random() for _ in range(k)]
            assert sorted(noisy_ranks(gold, rng)) == list(range(k))


@pytest.mark.parametrize("difference", [0.0, 0.02, 0.05, 0.1])
def test_pair_labels_are_bradley_terry(difference):
    rng = random.Random(2)
    n = 6000
    wins = sum(prefers_first(0.5 + difference, 0.5, rng) for _ in range(n))
    expected = 1.0 / (1.0 + math.exp(-difference / ANNOTATOR_TEMPERATURE))
    # 4 standard errors of a binomial proportion
    assert abs(wins / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-3


def test_pairwise_marginals_of_a_ranking_are_bradley_terry():
    # Plackett-Luce through Gumbel noise: inside a K-wise ranking, each pair is
    # still ordered with probability sigmoid(difference / temperature).
    rng = random.Random(3)
    gold = [0.9, 0.85, 0.7, 0.6]
    n = 5000
    counts = dict.fromkeys(itertools.combinations(range(4), 2), 0)
    for _ in range(n):
        ranks = noisy_ranks(gold, rng)
        for i, j in counts:
            counts[i, j] += ranks[i] < ranks[j]
    for (i, j), c in counts.items():
        p = label_agreement_probability(gold[i] - gold[j])
        assert abs(c / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3, (i, j)


def test_label_agreement_probability_values():
    assert label_agreement_probability(0.0) == 0.5
    t = ANNOTATOR_TEMPERATURE
    assert label_agreement_probability(0.1) == pytest.approx(1 / (1 + math.exp(-0.1 / t)))
    assert label_agreement_probability(0.1, temperature=0.05) == pytest.approx(1 / (1 + math.exp(-2)))
    assert label_agreement_probability(-0.1) == label_agreement_probability(0.1)
    assert label_agreement_probability(0.25) > 0.99
    assert label_agreement_probability(0.1, temperature=0.0) == 1.0


def test_noise_is_seeded_and_nonnegative_temperature():
    assert perceived_scores([0.1, 0.2], random.Random(9)) == perceived_scores([0.1, 0.2], random.Random(9))
    with pytest.raises(ValueError):
        perceived_scores([0.1], random.Random(0), temperature=-1.0)

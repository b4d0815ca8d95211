"""Records of the demo task: determinism, formats, splits, quality mix, label noise."""
import hashlib
import itertools
import random
from statistics import mean

import pytest

from rlhf_ds.tasks import (DescribeTask, gold_attributes, gold_reward, label_agreement_probability,
                           parse_topic, read_jsonl, write_demo_data)
from rlhf_ds.tasks import vocabulary as V
from rlhf_ds.tasks.gold import is_fluent, split_response
from rlhf_ds.tasks.responses import Knobs, sample_response

SMALL = dict(sft=200, preference=100, preference_eval=50, ranking=40, prompts=60, eval_prompts=20)


def _digests(paths):
    return {name: hashlib.sha256(open(p, "rb").read()).hexdigest() for name, p in paths.items()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = _digests(write_demo_data(str(tmp_path / "a"), seed=7, **SMALL))
    b = _digests(write_demo_data(str(tmp_path / "b"), seed=7, **SMALL))
    c = _digests(write_demo_data(str(tmp_path / "c"), seed=8, **SMALL))
    assert a == b
    assert set(a) == set(SMALL)
    assert all(a[name] != c[name] for name in a)


def test_files_hold_the_records(tmp_path):
    paths = write_demo_data(str(tmp_path), seed=2, **SMALL)
    task = DescribeTask(seed=2)
    assert read_jsonl(paths["sft"]) == task.sft_records(SMALL["sft"])
    assert read_jsonl(paths["preference_eval"]) == task.preference_records(50, split="eval")
    assert read_jsonl(paths["ranking"]) == task.ranking_records(40, k=4)
    assert len(read_jsonl(paths["eval_prompts"])) == 20
    with pytest.raises(ValueError, match="unknown sizes"):
        write_demo_data(str(tmp_path), seed=2, sfft=3)


def test_records_are_a_prefix_of_longer_runs():
    task = DescribeTask(seed=5)
    assert task.sft_records(300)[:40] == task.sft_records(40)
    assert task.preference_records(60)[:10] == task.preference_records(10)


def test_record_formats():
    task = DescribeTask(seed=0)
    for r in task.sft_records(20):
        assert set(r) == {"prompt", "response"} and all(isinstance(v, str) for v in r.values())
    for r in task.preference_records(20):
        assert set(r) == {"prompt", "chosen", "rejected"}
        assert r["chosen"] != r["rejected"]
        assert gold_reward(r["prompt"], r["chosen"]) != gold_reward(r["prompt"], r["rejected"])
    for r in task.ranking_records(20, k=5):
        assert set(r) == {"prompt", "responses", "ranks"}
        assert len(set(r["responses"])) == 5
        assert sorted(r["ranks"]) == list(range(5))
    for r in task.prompt_records(20, split="eval"):
        assert set(r) == {"prompt"}
    with pytest.raises(ValueError):
        task.ranking_records(1, k=1)
    with pytest.raises(ValueError):
        task.prompt_records(3, split="test")


def test_splits_hold_disjoint_prompts_with_every_topic_in_both():
    train, held_out = (set(map(lambda pair: V.render_prompt(*pair), V.prompt_pairs(s)))
                       for s in ("train", "eval"))
    assert not train & held_out
    assert len(train) + len(held_out) == len(V.TOPICS) * len(V.PROMPT_TEMPLATES)
    assert {parse_topic(p) for p in held_out} == set(V.TOPICS)
    assert {parse_topic(p) for p in train} == set(V.TOPICS)
    task = DescribeTask(seed=0)
    assert {r["prompt"] for r in task.sft_records(500)} <= train
    assert {r["prompt"] for r in task.preference_records(100, split="eval")} <= held_out
    # Held-out prompts are cycled: one pass covers every one of them.
    cycled = [r["prompt"] for r in task.prompt_records(len(held_out), split="eval")]
    assert set(cycled) == held_out


def test_sft_data_is_of_mixed_quality_with_every_combination():
    records = DescribeTask(seed=0).sft_records(4000)
    attrs = [gold_attributes(r["prompt"], r["response"]) for r in records]
    # Imitating the data gives about half the maximum reward: PPO has room.
    mean_gold = mean(gold_reward(r["prompt"], r["response"]) for r in records)
    assert 0.45 <= mean_gold <= 0.65
    for name in attrs[0]:
        assert 0.35 <= mean(a[name] for a in attrs) <= 0.8, name
    # Every combination of perfect / imperfect attributes is present.
    combos = {tuple(a[k] == 1.0 for k in sorted(a)) for a in attrs}
    assert combos == set(itertools.product([False, True], repeat=len(attrs[0])))
    assert mean(all(v == 1.0 for v in a.values()) for a in attrs) > 0.005


@pytest.mark.parametrize("seed", range(3))
def test_knobs_control_their_attribute(seed):
    rng = random.Random(seed)
    prompt, topic = "describe the river", "river"
    for knobs in itertools.product(["positive", "mixed", "negative"], *[[False, True]] * 5):
        k = Knobs(*knobs)
        response = sample_response(topic, rng, k)
        attrs = gold_attributes(prompt, response)
        words, _ = split_response(response)
        assert attrs["on_topic"] == float(k.on_topic), response
        assert attrs["ending"] == float(k.ending), response
        assert attrs["no_repeat"] == float(k.no_repeat), response
        assert is_fluent(words) == k.fluency, response
        if k.fluency:  # a grammar slip may add or drop a word
            assert (attrs["length"] == 1.0) == k.length, response
        if k.mood == "positive":
            assert attrs["sentiment"] >= 0.5, response
        if k.mood == "negative":
            assert attrs["sentiment"] <= 0.5, response


def test_preference_labels_follow_gold_with_the_stated_noise():
    records = DescribeTask(seed=0).preference_records(3000, split="eval")
    agree = [gold_reward(r["prompt"], r["chosen"]) > gold_reward(r["prompt"], r["rejected"])
             for r in records]
    expected = mean(label_agreement_probability(
        gold_reward(r["prompt"], r["chosen"]) - gold_reward(r["prompt"], r["rejected"]))
        for r in records)
    # The noise is real (not every label agrees) but mild: the ceiling of a reward
    # model on these labels is about 0.94.
    assert 0.93 <= mean(agree) <= 0.98
    assert abs(mean(agree) - expected) < 0.02
    # Pairs far apart in gold are almost always labelled right.
    far = [a for a, r in zip(agree, records)
           if abs(gold_reward(r["prompt"], r["chosen"]) - gold_reward(r["prompt"], r["rejected"])) > 0.15]
    assert mean(far) > 0.99


def test_rankings_follow_gold():
    records = DescribeTask(seed=0).ranking_records(1000, k=4)
    top_is_gold_best, pairs_agree = [], []
    for r in records:
        gold = [gold_reward(r["prompt"], x) for x in r["responses"]]
        best = r["ranks"].index(0)
        top_is_gold_best.append(gold[best] == max(gold))
        for i, j in itertools.combinations(range(4), 2):
            if gold[i] != gold[j]:
                pairs_agree.append((gold[i] > gold[j]) == (r["ranks"][i] < r["ranks"][j]))
    assert 0.75 <= mean(top_is_gold_best) < 1.0
    assert 0.93 <= mean(pairs_agree) < 1.0


def test_responses_use_only_task_words():
    # Task words, or two function words glued together by a "glue" slip.
    glued = {a + b for a in V.FUNCTION_WORDS for b in V.FUNCTION_WORDS}
    seen_glued = 0
    for r in DescribeTask(seed=4).sft_records(1000):
        words = set(split_response(r["response"])[0])
        assert words <= set(V.WORD_CLASS) | glued, r
        seen_glued += bool(words & glued)
        assert r["response"] == r["response"].strip() and "  " not in r["response"]
    assert seen_glued > 0


def test_revision_pairs_change_one_part_of_the_sentence():
    from rlhf_ds.tasks.responses import build_response, edit_knobs, sample_knobs
    rng = random.Random(0)
    revisions = 0
    for _ in range(200):
        knobs = sample_knobs(rng)
        seed = rng.getrandbits(64)
        a = build_response("cat", seed, knobs)
        assert build_response("cat", seed, knobs) == a          # pure
        edited = edit_knobs(knobs, rng)
        assert edited != knobs
        if [k for k in vars(knobs) if getattr(knobs, k) != getattr(edited, k)] == ["ending"]:
            b = build_response("cat", seed, edited)
            assert a.rstrip(".!") == b.rstrip(".!") and a != b
            revisions += 1
    assert revisions > 5


def test_preference_pairs_are_mostly_revisions(monkeypatch):
    import rlhf_ds.tasks.generator as G

    def shared_start(seed):
        records = DescribeTask(seed=seed).preference_records(400)
        return mean(r["chosen"].split()[:3] == r["rejected"].split()[:3] for r in records)

    with_revisions = shared_start(0)
    monkeypatch.setattr(G, "REVISION_PAIR_RATE", 0.0)
    independent = shared_start(0)
    assert independent < 0.15 and with_revisions > 0.3


def test_data_generation_is_fast_enough_for_a_demo():
    # ~10k records must take about a second; allow a loaded shared machine.
    import time
    start = time.perf_counter()
    DescribeTask(seed=0).sft_records(10000)
    assert time.perf_counter() - start < 10.0

"""The arithmetic task: questions and their split, the checker and its rewards, pass@k, the data."""
import json
import os
from itertools import combinations

import pytest

from rlhf_ds.tasks.arithmetic import (ANSWER_FORM, MAX_OPERAND, REWARD_SOURCES, ArithmeticTask, exact_match,
                                      format_reward, parse_answer, pass_at_k, pass_rates, questions,
                                      score_samples, write_arithmetic_data)
from rlhf_ds.tasks.generator import read_jsonl


def test_every_answer_is_the_arithmetic_result():
    for split in ("train", "eval"):
        for q in questions(split):
            assert 0 <= q.a <= MAX_OPERAND and 0 <= q.b <= MAX_OPERAND
            assert q.answer == eval(f"{q.a} {q.op} {q.b}") >= 0     # independent of the task's own code
            assert str(q.a) in q.text and str(q.b) in q.text


def test_held_out_questions_are_unseen_but_their_facts_are_taught():
    train, held = questions("train"), questions("eval")
    train_texts = {q.text for q in train}
    assert held and not any(q.text in train_texts for q in held)
    train_facts = {(q.a, q.op, q.b) for q in train}
    assert all((q.a, q.op, q.b) in train_facts for q in held)
    assert len({q.text for q in held}) == len(held)
    assert 0.05 < len(held) / (len(held) + len(train)) < 0.2


def test_the_split_does_not_depend_on_the_seed():
    assert {r["prompt"] for r in ArithmeticTask(0).prompt_records(128, "eval")} == \
        {r["prompt"] for r in ArithmeticTask(5).prompt_records(128, "eval")}


@pytest.mark.parametrize("text, value", [
    ("answer: 12", 12), ("  answer: 0\n", 0), ("answer: -3", -3),
    ("answer:12", None), ("answer: 012", None), ("the answer is 12.", None), ("12", None),
    ("answer: 12.", None), ("answer: 1 2", None), ("", None), ("answer: ", None),
])
def test_fixed_form(text, value):
    assert parse_answer(text) == value


def test_rewards_as_a_reward_function_sees_them():
    prompts = ["what is 2 + 3?"] * 4 + ["x"]
    completions = ["answer: 5", "answer: 6", "5", "the answer is 5.", "answer: 1"]
    answers = ["5", "5", "5", "5", None]
    assert exact_match(prompts, completions, answer=answers) == [1.0, 0.0, 0.0, 0.0, None]
    assert format_reward(prompts, completions, answer=answers) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert exact_match(["q"], ["answer: 7"], answer=[7]) == [1.0]       # CSV columns arrive as ints


def test_rewards_load_by_name_through_the_config():
    from rlhf_ds.config import load_config
    from rlhf_ds.rewards import RewardBatch, combine, sources_from_config

    value = json.dumps(REWARD_SOURCES)
    sources = sources_from_config(load_config(None, [f"--rewards.sources={value}"]).rewards.sources)
    batch = RewardBatch(["q"] * 3, ["answer: 5", "answer: 4", "5"], {"answer": ["5", "5", "5"]})
    total, parts = combine(sources, batch)
    assert [s.name for s, _ in sources] == ["exact_match", "format_reward"]
    assert total.tolist() == pytest.approx([1.1, 0.1, 0.0])


def _pass_at_k_by_enumeration(n, c, k):
    """Share of the k-subsets of n samples (c right) holding a right one: the definition, counted."""
    right = set(range(c))
    subsets = list(combinations(range(n), k))
    return sum(bool(right & set(s)) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n, c, k", [(1, 0, 1), (1, 1, 1), (4, 1, 1), (4, 1, 2), (5, 2, 3), (6, 0, 6), (6, 1, 6),
                                     (8, 3, 8), (7, 7, 2)])
def test_pass_at_k_matches_enumeration(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_enumeration(n, c, k))


def test_pass_rates_by_hand():
    # Question 1: 1 of 4 right; question 2: none; question 3: all four.
    got = pass_rates([[True, False, False, False], [False] * 4, [True] * 4])
    assert got == {"accuracy": pytest.approx((0.25 + 0 + 1) / 3), "pass_at_n": pytest.approx(2 / 3), "n": 4}
    with pytest.raises(ValueError, match="same number"):
        pass_rates([[True], [True, False]])


def test_score_samples():
    got = score_samples([["answer: 5", "5"], ["answer: 1", "answer: 2"]], ["5", "2"])
    assert got == {"accuracy": 0.5, "pass_at_n": 1.0, "n": 2, "format_rate": 0.75}


def test_sft_data_is_of_mixed_quality_with_room_above_it():
    task = ArithmeticTask(0)
    records = task.sft_records(2000)
    answer = {q.text: q.answer for q in questions("train")}
    right = [parse_answer(r["response"]) == answer[r["prompt"]] for r in records]
    formed = [parse_answer(r["response"]) is not None for r in records]
    assert 0.35 < sum(right) / len(right) < 0.55      # the SFT policy imitates this: far from 1
    assert 0.6 < sum(formed) / len(formed) < 0.8
    wrong_but_formed = [r for r, ok, f in zip(records, right, formed) if f and not ok]
    assert wrong_but_formed and all(r["response"].startswith("answer: ") for r in wrong_but_formed)


def test_records_are_deterministic_and_prefix_stable():
    a, b = ArithmeticTask(3), ArithmeticTask(3)
    assert a.sft_records(50) == b.sft_records(50)
    assert a.sft_records(20) == a.sft_records(50)[:20]
    assert a.sft_records(50) != ArithmeticTask(4).sft_records(50)
    assert all(r["prompt"] in {q.text for q in questions("train")} for r in a.sft_records(200))


def test_files(tmp_path):
    paths = write_arithmetic_data(str(tmp_path / "a"), seed=1, sft=40, prompts=20, eval_prompts=10)
    again = write_arithmetic_data(str(tmp_path / "b"), seed=1, sft=40, prompts=20, eval_prompts=10)
    for name in paths:
        with open(paths[name], "rb") as x, open(again[name], "rb") as y:
            assert x.read() == y.read()
    evals = read_jsonl(paths["eval_prompts"])
    assert len(evals) == 10 and all(set(r) == {"prompt", "answer"} for r in evals)
    assert all(ANSWER_FORM.format(r["answer"]) == f"answer: {r['answer']}" for r in evals)
    with pytest.raises(ValueError, match="unknown sizes"):
        write_arithmetic_data(str(tmp_path / "c"), ranking=3)


def test_prompt_files_load_with_the_answer_column(tmp_path):
    from rlhf_ds.data import load_prompts

    paths = write_arithmetic_data(str(tmp_path), sft=10, prompts=10, eval_prompts=5)
    records = load_prompts(paths["prompts"]).records
    assert all(set(r.meta) == {"answer"} for r in records)
    assert load_prompts(paths["prompts"]).format == "prompt_field"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from rlhf_ds.tasks.arithmetic import prepare_arithmetic

    out = str(tmp_path_factory.mktemp("arith") / "task")
    return out, prepare_arithmetic(out, seed=0, sft=300, prompts=50, eval_prompts=20)


def test_prepare_builds_everything_and_reuses_it(prepared):
    from rlhf_ds.tasks.arithmetic import prepare_arithmetic

    out, paths = prepared
    assert set(paths) == {"data_sft", "data_prompts", "data_eval_prompts", "tokenizer", "base_model", "task"}
    with open(paths["task"]) as f:
        info = json.load(f)
    assert info["task"] == "arithmetic" and info["parameters"] < 2_000_000
    assert 0.3 < info["sft_data_accuracy"] < 0.6 and 0.5 < info["sft_data_format_rate"] < 0.9
    stamp = os.path.getmtime(paths["task"])
    assert prepare_arithmetic(out, seed=0, sft=300, prompts=50, eval_prompts=20) == paths
    assert os.path.getmtime(paths["task"]) == stamp


def test_tokenizer_round_trips_questions_and_answers(prepared):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(prepared[1]["tokenizer"])
    assert tok.pad_token_id != tok.eos_token_id
    for text in ["what is 12 + 7?", "subtract 3 from 15.", "answer: 19", "answer: -4", "the answer is 105."]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    # Digits are single tokens, so every number is spelled digit by digit.
    assert tok.tokenize("answer: 19")[-2:] == ["1", "9"]
    chat = tok.apply_chat_template([{"role": "user", "content": "1 + 1 = ?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat.endswith("<|assistant|>")


def test_preset_is_a_valid_config_layer(tmp_path):
    from rlhf_ds.config import load_config
    from rlhf_ds.tasks.arithmetic import PRESET

    cfg = load_config({**PRESET, "model": {"name_or_path": str(tmp_path)}})
    assert [s.label() for s in cfg.rewards.sources] == ["exact_match", "format_reward"]
    assert cfg.data.max_length == PRESET["data"]["max_length"]


def test_preset_lengths_fit_every_question_and_response(prepared):
    from transformers import AutoTokenizer

    from rlhf_ds.tasks.arithmetic import PRESET

    tok = AutoTokenizer.from_pretrained(prepared[1]["tokenizer"])
    prompts = [q.text for split in ("train", "eval") for q in questions(split)]
    rendered = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in prompts]
    longest_prompt = max(len(tok.encode(text, add_special_tokens=False)) for text in rendered)
    assert longest_prompt > 8                   # counts tokens, not the keys of an encoding
    longest_response = max(len(tok.encode(r["response"], add_special_tokens=False)) + 1      # + eos
                           for r in ArithmeticTask(0).sft_records(3000))
    assert longest_prompt <= PRESET["data"]["max_prompt_length"]
    assert longest_response <= PRESET["generation"]["max_new_tokens"]
    assert longest_prompt + longest_response <= PRESET["data"]["max_length"]

"""Rewards from Python functions: names, arguments, values, None, weights, async, and each error."""
import textwrap

import pytest
import torch

from rlhf_ds.config_schema import ConfigError
from rlhf_ds.rewards import (FunctionSource, RewardBatch, RewardSourceError, columns_from_meta, combine,
                             function_source, load_function)

PROMPTS = ["what is 2 + 3?", "what is 7 - 4?", "what is 1 + 1?"]
COMPLETIONS = ["answer: 5", "answer: 2", "it is 2"]
ANSWERS = ["5", "3", "2"]


def _batch(**columns):
    return RewardBatch(list(PROMPTS), list(COMPLETIONS), columns or {"answer": list(ANSWERS), "level": [1, 2, 3]})


def _source(fn, name="f"):
    return FunctionSource(name, fn)


def _write(tmp_path, body, name="reward_file_under_test.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_file_and_module_names_load(tmp_path, monkeypatch):
    path = _write(tmp_path, """
        def score(prompts, completions, answer, **kw):
            return [float(c.endswith(a)) for c, a in zip(completions, answer)]
    """)
    s = function_source(f"{path}:score")
    assert s.name == "score"
    assert s(_batch()).values.tolist() == [1.0, 0.0, 1.0]
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_function("reward_file_under_test:score") is not None
    assert function_source("reward_file_under_test:score", name="acc").name == "acc"


def test_every_column_reaches_the_function_with_prompts_and_completions():
    seen = {}

    def fn(prompts, completions, **columns):
        seen.update(prompts=prompts, completions=completions, **columns)
        return [0.0] * len(completions)

    _source(fn)(_batch())
    assert seen == {"prompts": PROMPTS, "completions": COMPLETIONS, "answer": ANSWERS, "level": [1, 2, 3]}


def test_a_function_without_kwargs_gets_only_the_columns_it_names():
    def fn(prompts, completions, answer):
        return [float(a == "5") for a in answer]

    assert _source(fn)(_batch()).values.tolist() == [1.0, 0.0, 0.0]


def test_columns_from_prompt_records_repeat_per_sample_and_fill_missing_with_none():
    cols = columns_from_meta([{"answer": "5"}, {"answer": "3", "tests": ["t"]}], repeat=2)
    assert cols == {"answer": ["5", "5", "3", "3"], "tests": [None, None, ["t"], ["t"]]}


def test_none_means_the_row_is_not_scored():
    s = _source(lambda prompts, completions, **kw: [1.5, None, -2])(_batch())
    assert s.values.tolist() == [1.5, 0.0, -2.0]
    assert s.applies.tolist() == [True, False, True]


def test_numpy_and_tensor_results_are_accepted():
    import numpy as np
    assert _source(lambda prompts, completions, **kw: np.array([1, 2, 3]))(_batch()).values.tolist() == [1, 2, 3]
    assert _source(lambda prompts, completions, **kw: torch.tensor([0.5, 0.25, 0]))(_batch()).values.tolist() == \
        [0.5, 0.25, 0.0]


def test_weighted_sum_over_sources_with_none():
    a = _source(lambda prompts, completions, **kw: [1.0, 0.0, None], "a")
    b = _source(lambda prompts, completions, **kw: [None, 2.0, 4.0], "b")
    total, parts = combine([(a, 1.0), (b, 0.5)], _batch())
    # Hand-computed: row 0 = 1*1; row 1 = 1*0 + 0.5*2; row 2 = 0.5*4 (a does not apply).
    assert total.tolist() == [1.0, 1.0, 2.0]
    assert set(parts) == {"a", "b"} and parts["a"].applies.tolist() == [True, True, False]


def test_async_functions_are_awaited(tmp_path):
    path = _write(tmp_path, """
        import asyncio
        async def score(prompts, completions, **kw):
            await asyncio.sleep(0)
            return [float(len(c)) for c in completions]
    """)
    assert function_source(f"{path}:score")(_batch()).values.tolist() == [9.0, 9.0, 7.0]


def test_async_function_called_from_a_running_loop():
    import asyncio

    async def score(prompts, completions, **kw):
        return [1.0] * len(completions)

    async def main():
        return _source(score)(_batch())

    assert asyncio.run(main()).values.tolist() == [1.0, 1.0, 1.0]


# ----------------------------------------------------------------------------- errors

def _error(fn, batch=None) -> str:
    with pytest.raises(RewardSourceError) as e:
        _source(fn, "acc")(batch or _batch())
    return str(e.value)


def test_a_function_that_raises_names_the_source_and_the_first_failing_row():
    def fn(prompts, completions, answer, **kw):
        return [float(int(c.split(": ")[1]) == int(a)) for c, a in zip(completions, answer)]

    msg = _error(fn)
    assert msg.startswith("reward source 'acc' (row 2): raised IndexError: list index out of range; "
                          "prompt 'what is 1 + 1?', completion 'it is 2'"), msg
    assert "\n" not in msg


def test_wrong_number_of_values():
    msg = _error(lambda prompts, completions, **kw: [1.0, 2.0])
    assert msg == ("reward source 'acc': returned 2 values for 3 completions; expected one number (or None) "
                   "per completion")


@pytest.mark.parametrize("bad, row, what", [
    ("x", 1, "returned 'x' (str), expected a number or None; prompt 'what is 7 - 4?', completion 'answer: 2'"),
    (float("nan"), 1, "returned nan (not a finite number); prompt 'what is 7 - 4?'"),
    (float("inf"), 1, "returned inf (not a finite number)"),
    (True, 1, "returned True (bool) (a bool: return float(...) if it is meant as 0/1)"),
    ([1.0], 1, "returned [1.0] (list), expected a number or None"),
])
def test_non_numbers_and_nan_name_the_row(bad, row, what):
    msg = _error(lambda prompts, completions, **kw: [0.0, bad, 1.0])
    assert msg.startswith(f"reward source 'acc' (row {row}): {what}"), msg


def test_a_result_that_is_not_a_list():
    assert "returned float 1.0; expected a list with one number (or None) per completion" in \
        _error(lambda prompts, completions, **kw: 1.0)


def test_a_missing_parameter_says_how_the_function_is_called():
    msg = _error(lambda prompts, completions, solution: [0.0] * 3)
    assert "raised TypeError" in msg and "columns here: answer, level" in msg


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "'no_colon' is not a function name; expected package.module:function or path/to/file.py:function"),
    ("missing_dir/nothing.py:f", "missing_dir/nothing.py: no such file"),
    ("no_such_module_xyz:f", "no module named 'no_such_module_xyz'"),
    ("rlhf_ds.rewards.values:nothing", "'rlhf_ds.rewards.values' has no 'nothing'; functions there: "),
])
def test_bad_names_are_config_errors(spec, message):
    with pytest.raises(ConfigError) as e:
        load_function(spec)
    assert message in str(e.value)


def test_a_file_with_a_syntax_error_names_its_line(tmp_path):
    path = _write(tmp_path, "def f(:\n    pass\n", "broken.py")
    with pytest.raises(ConfigError, match=r"broken.py:1: syntax error"):
        load_function(f"{path}:f")

"""Held-out prompts over ranks (rl_eval.eval_rows): every prompt counted exactly once, every rank the same
number of rows (its collective forwards stay in step), padding only at the end of a rank's share. The
evaluation used to give each rank len // world prompts and drop the rest (15 prompts on 2 ranks: 14)."""
import pytest

from rlhf_ds.trainers.rl_eval import eval_rows


@pytest.mark.parametrize("size, world", [(15, 2), (16, 2), (77, 2), (1, 2), (5, 4), (3, 8), (7, 1)])
def test_every_prompt_once_and_equal_shares(size, world):
    shares = [eval_rows(size, rank, world) for rank in range(world)]
    assert len({len(rows) for rows, _ in shares}) == 1
    counted = [i for rows, n in shares for i in rows[:n]]
    assert counted == list(range(size))
    for rows, n in shares:
        assert all(0 <= i < size for i in rows) and rows[n:] == [0] * (len(rows) - n)


def test_divisible_sets_split_as_before():
    assert eval_rows(16, 0, 2) == (list(range(8)), 8) and eval_rows(16, 1, 2) == (list(range(8, 16)), 8)

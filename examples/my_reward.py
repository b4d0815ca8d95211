"""An example reward file: name a function here in `rewards.sources` as

    rewards:
      sources:
        - {type: function, function: examples/my_reward.py:contains_answer, weight: 1.0}
        - {type: function, function: examples/my_reward.py:brevity, weight: 0.2}

Every function gets the batch as keyword lists, one entry per completion:

    prompts       the prompt's text (its last user turn); repeated when n samples per prompt
    completions   the decoded responses
    **columns     every other column of the prompt records (here: `answer`); None where a record
                  has no such column

and returns one float per completion, or None where the reward does not apply (that row then
gets nothing from this source). Plain and `async def` functions both work. A function that
raises, returns the wrong number of values, a non-number or NaN stops the run with one line
naming the source and the row.

Try it: `python examples/my_reward.py` scores a small batch the way a run does.
"""
import asyncio
import re
from typing import List, Optional


def contains_answer(prompts: List[str], completions: List[str], answer: List[Optional[str]],
                    **columns) -> List[Optional[float]]:
    """1.0 when the record's `answer` appears in the completion as a whole word; None without one."""
    out: List[Optional[float]] = []
    for completion, expected in zip(completions, answer):
        if expected is None:
            out.append(None)
        else:
            out.append(1.0 if re.search(rf"(?<!\w){re.escape(str(expected))}(?!\w)", completion) else 0.0)
    return out


async def brevity(prompts: List[str], completions: List[str], **columns) -> List[float]:
    """Async example (e.g. a function that awaits a service): shorter is better, in [0, 1]."""
    await asyncio.sleep(0)
    return [1.0 / (1.0 + len(c.split()) / 10.0) for c in completions]


if __name__ == "__main__":
    from rlhf_ds.rewards import RewardBatch, combine, function_source, source_metrics

    batch = RewardBatch(prompts=["what is 2 + 3?", "what is 2 + 3?", "name a colour."],
                        completions=["answer: 5", "it is 6, I think", "blue"],
                        columns={"answer": ["5", "5", None]})
    sources = [(function_source(f"{__file__}:contains_answer"), 1.0), (function_source(f"{__file__}:brevity"), 0.2)]
    total, parts = combine(sources, batch)
    for c, r in zip(batch.completions, total.tolist()):
        print(f"{r:6.3f}  {c!r}")
    print(source_metrics(parts))

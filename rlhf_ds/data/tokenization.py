"""Records -> tokenized examples (plain lists of ids), with truncation counted.

Truncation policy (`max_length` bounds prompt + response, `max_prompt_length` the
prompt alone; None = no bound):

1. A prompt longer than `max_prompt_length` keeps its LAST tokens (cut from the
   left): the end of a prompt (latest turn, generation marker) is what the response
   answers. A leading BOS is kept.
2. If prompt + response is still longer than `max_length`, the prompt gives up
   tokens from the left first, but keeps at least `max_length // 2` (or all of it
   if shorter): a response with no context to answer is useless.
3. The response is then cut from the right to fit. A cut response does NOT end in
   EOS: it did not end there, and teaching the model to stop mid-sentence (or a
   reward model that such text is complete) would be wrong.

For K-wise data the prompt is cut once, against the longest response, so every
response continues the same prompt. Prompts for generation only know rule 1.

For SFT, rule 1 bounds what precedes the FIRST assistant turn (a single-turn
record's prompt). The turns after it, earlier assistant targets included, are kept
whole whenever the conversation fits in `max_length`. When it does not, rules 2
and 3 apply with "prompt" = everything before the last assistant turn and
"response" = the last assistant turn: the conversation loses its earliest tokens
first (an earlier assistant turn cut there loses its labels with its tokens), then
the last turn is cut from the right.

`TruncationStats` counts records (and prompts / responses) that were cut.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from rlhf_ds.data.chat import ChatFormatter
from rlhf_ds.data.records import PreferenceRecord, PromptRecord, RankingRecord, SFTRecord

IGNORE_INDEX = -100   # label of tokens that carry no loss (PyTorch cross-entropy default)


@dataclasses.dataclass
class SFTExample:
    input_ids: List[int]      # (T,)
    labels: List[int]         # (T,) = input_ids on assistant turns, IGNORE_INDEX elsewhere
    prompt_length: int        # tokens before the last assistant turn
    truncated: bool = False


@dataclasses.dataclass
class RankingExample:
    prompt_ids: List[int]                # (P,) shared by all responses
    responses: List[List[int]]           # K x (R_k,), best first
    response_masks: List[List[int]]      # K x (R_k,): 1 on assistant tokens (action_mask)
    ranks: List[int]                     # (K,) dense, 0 = best
    margin: Optional[float] = None
    truncated: bool = False


@dataclasses.dataclass
class PromptExample:
    input_ids: List[int]      # (P,) ends with the generation prompt
    text: str                 # the rendered prompt (decoded from the kept ids if cut)
    meta: Dict[str, Any]
    truncated: bool = False


@dataclasses.dataclass
class TruncationStats:
    max_length: Optional[int] = None
    max_prompt_length: Optional[int] = None
    records: int = 0
    truncated: int = 0            # records with anything cut
    prompts_truncated: int = 0
    responses_truncated: int = 0  # responses cut (K per ranking record at most)

    def add(self, prompt_cut: bool, responses_cut: int) -> bool:
        self.records += 1
        self.prompts_truncated += int(prompt_cut)
        self.responses_truncated += responses_cut
        cut = prompt_cut or responses_cut > 0
        self.truncated += int(cut)
        return cut

    def summary(self) -> str:
        return (f"{self.truncated}/{self.records} records truncated to max_length={self.max_length}, "
                f"max_prompt_length={self.max_prompt_length} ({self.prompts_truncated} prompts "
                f"cut from the left, {self.responses_truncated} responses cut from the right)")


def _check_limits(max_length: Optional[int], max_prompt_length: Optional[int]) -> None:
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if max_prompt_length is not None and max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be at least 1, got {max_prompt_length}")


def budget(prompt_len: int, longest_response: int, max_length: Optional[int],
           max_prompt_length: Optional[int]) -> Tuple[int, Optional[int]]:
    """`(prompt tokens kept, response budget or None)` under the policy above."""
    p = prompt_len if max_prompt_length is None else min(prompt_len, max_prompt_length)
    if max_length is None or p + longest_response <= max_length:
        return p, None if max_length is None else max_length - p
    p = max(min(p, max_length // 2), max_length - longest_response)
    return p, max_length - p


def keep_last(ids: List[int], n: int, head: Sequence[int] = ()) -> List[int]:
    """The last `n` tokens of `ids`, keeping `head` (a BOS) in front if ids start with it."""
    if len(ids) <= n:
        return list(ids)
    h = list(head) if head and ids[:len(head)] == list(head) and n > len(head) else []
    return h + ids[len(ids) - (n - len(h)):]


def _records(records) -> list:
    return list(getattr(records, "records", records))     # a LoadResult or a list


# ------------------------------------------------------------------- SFT

def tokenize_sft(records, formatter: ChatFormatter, max_length: Optional[int] = None,
                 max_prompt_length: Optional[int] = None) -> Tuple[List[SFTExample], TruncationStats]:
    _check_limits(max_length, max_prompt_length)
    stats = TruncationStats(max_length, max_prompt_length)
    out = []
    for rec in _records(records):
        if not isinstance(rec, SFTRecord):
            raise TypeError(f"tokenize_sft needs SFTRecord, got {type(rec).__name__}")
        ids, labels, starts = [], [], []
        for s in formatter.segments(rec.messages):
            if s.target:
                starts.append(len(ids))
            ids += s.ids
            labels += s.ids if s.target else [IGNORE_INDEX] * len(s.ids)
        pairs = list(zip(ids, labels))                  # cut ids and labels together
        bos = [(t, IGNORE_INDEX) for t in formatter.bos_ids]
        first, last = starts[0], starts[-1]
        prompt, response = pairs[:last], pairs[last:]
        context = pairs[:first] if max_prompt_length is None else keep_last(pairs[:first], max_prompt_length, bos)
        p, r_budget = budget(len(context) + last - first, len(response), max_length, None)
        kept_prompt = keep_last(context + pairs[first:last], p, bos)
        kept_response = response if r_budget is None else response[:r_budget]
        cut = stats.add(len(kept_prompt) < len(prompt), int(len(kept_response) < len(response)))
        kept = kept_prompt + kept_response
        out.append(SFTExample([t for t, _ in kept], [l for _, l in kept], len(kept_prompt), cut))
    return out, stats


# -------------------------------------------------------- preference / ranking

def tokenize_ranking(records, formatter: ChatFormatter, max_length: Optional[int] = None,
                     max_prompt_length: Optional[int] = None
                     ) -> Tuple[List[RankingExample], TruncationStats]:
    """`PreferenceRecord`s (as K=2, chosen first) and/or `RankingRecord`s."""
    _check_limits(max_length, max_prompt_length)
    stats = TruncationStats(max_length, max_prompt_length)
    out = []
    for rec in _records(records):
        if isinstance(rec, PreferenceRecord):
            rec = rec.to_ranking()
        if not isinstance(rec, RankingRecord):
            raise TypeError(f"tokenize_ranking needs PreferenceRecord or RankingRecord, got {type(rec).__name__}")
        prompt_ids = formatter.encode_prompt(rec.prompt)
        responses, masks = [], []
        for resp in rec.responses:
            segs = formatter.segments(list(rec.prompt) + list(resp), target_from=len(rec.prompt))
            if segs[0].target or segs[0].ids != prompt_ids:
                raise ValueError("the chat template renders the prompt differently inside the "
                                 "conversation than alone; use chat_template='plain'")
            responses.append([t for s in segs[1:] for t in s.ids])
            masks.append([int(s.target) for s in segs[1:] for _ in s.ids])
        p, r_budget = budget(len(prompt_ids), max(map(len, responses)), max_length, max_prompt_length)
        kept_prompt = keep_last(prompt_ids, p, formatter.bos_ids)
        n_cut = 0
        if r_budget is not None:
            n_cut = sum(len(r) > r_budget for r in responses)
            responses = [r[:r_budget] for r in responses]
            masks = [m[:r_budget] for m in masks]
        cut = stats.add(len(kept_prompt) < len(prompt_ids), n_cut)
        out.append(RankingExample(kept_prompt, responses, masks, list(rec.ranks), rec.margin, cut))
    return out, stats


# ---------------------------------------------------------------- prompts

def tokenize_prompts(records, formatter: ChatFormatter, max_prompt_length: Optional[int] = None
                     ) -> Tuple[List[PromptExample], TruncationStats]:
    _check_limits(None, max_prompt_length)
    stats = TruncationStats(None, max_prompt_length)
    out = []
    for rec in _records(records):
        if not isinstance(rec, PromptRecord):
            raise TypeError(f"tokenize_prompts needs PromptRecord, got {type(rec).__name__} "
                            "(load with kind='prompt' to take the prompts of labelled data)")
        text = formatter.prompt_text(rec.messages)
        ids = formatter.encode_prompt_text(text)   # rendered once
        kept = ids if max_prompt_length is None else keep_last(ids, max_prompt_length, formatter.bos_ids)
        cut = stats.add(len(kept) < len(ids), 0)
        if cut:
            text = formatter.tokenizer.decode(kept)
        out.append(PromptExample(kept, text, dict(rec.meta), cut))
    return out, stats


Example = Union[SFTExample, RankingExample, PromptExample]

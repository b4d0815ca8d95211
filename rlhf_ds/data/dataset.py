"""Map-style torch datasets of tokenized examples, each with its collate function.

    tok = AutoTokenizer.from_pretrained(path)
    grew = ensure_pad_token(tok)                      # resize embeddings if True
    ds = SFTDataset(load_sft("train.jsonl"), tok, max_length=1024)
    print(ds.stats.summary())                         # how many records were cut
    loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=ds.collate)  # SFTBatch

Records are tokenized once, when the dataset is built (so truncation is counted up
front and bad templates fail before training). Sharding across ranks is the
sampler's job: these are plain `__len__` / `__getitem__` datasets.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from rlhf_ds.data.chat import ChatFormatter
from rlhf_ds.data.collate import collate_prompts, collate_ranking, collate_sft
from rlhf_ds.data.special_tokens import check_pad_token
from rlhf_ds.data.tokenization import (TruncationStats, tokenize_prompts, tokenize_ranking,
                                       tokenize_sft)


class _Tokenized(torch.utils.data.Dataset):
    def __init__(self, examples: list, stats: TruncationStats, pad_token_id: int,
                 pad_to_multiple_of: Optional[int]):
        self.examples = examples
        self.stats = stats
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


class SFTDataset(_Tokenized):
    """`SFTRecord`s -> `SFTExample`s; `collate` gives right-padded `SFTBatch`es."""

    def __init__(self, records, tokenizer, max_length: Optional[int] = None,
                 max_prompt_length: Optional[int] = None, chat_template: Optional[str] = None,
                 pad_to_multiple_of: Optional[int] = None):
        pad = check_pad_token(tokenizer)
        self.formatter = ChatFormatter(tokenizer, chat_template)
        examples, stats = tokenize_sft(records, self.formatter, max_length, max_prompt_length)
        super().__init__(examples, stats, pad, pad_to_multiple_of)

    def collate(self, examples: List):
        return collate_sft(examples, self.pad_token_id, self.pad_to_multiple_of)


class RankingDataset(_Tokenized):
    """`PreferenceRecord`s (K=2, chosen first) and `RankingRecord`s -> `RankingExample`s;
    `collate` gives right-padded `RankingBatch`es `(B, K, T)`. `num_responses` fixes K
    (else the largest K in each batch)."""

    def __init__(self, records, tokenizer, max_length: Optional[int] = None,
                 max_prompt_length: Optional[int] = None, chat_template: Optional[str] = None,
                 pad_to_multiple_of: Optional[int] = None, num_responses: Optional[int] = None):
        pad = check_pad_token(tokenizer)
        self.formatter = ChatFormatter(tokenizer, chat_template)
        self.num_responses = num_responses
        examples, stats = tokenize_ranking(records, self.formatter, max_length, max_prompt_length)
        super().__init__(examples, stats, pad, pad_to_multiple_of)

    def collate(self, examples: List):
        return collate_ranking(examples, self.pad_token_id, self.num_responses, self.pad_to_multiple_of)


class PromptDataset(_Tokenized):
    """`PromptRecord`s -> `PromptExample`s (rendered with the generation prompt);
    `collate` gives LEFT-padded `PromptBatch`es."""

    def __init__(self, records, tokenizer, max_prompt_length: Optional[int] = None,
                 chat_template: Optional[str] = None, pad_to_multiple_of: Optional[int] = None):
        pad = check_pad_token(tokenizer)
        self.formatter = ChatFormatter(tokenizer, chat_template)
        examples, stats = tokenize_prompts(records, self.formatter, max_prompt_length)
        super().__init__(examples, stats, pad, pad_to_multiple_of)

    def collate(self, examples: List):
        return collate_prompts(examples, self.pad_token_id, self.pad_to_multiple_of)

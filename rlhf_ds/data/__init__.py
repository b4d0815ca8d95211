"""Data: files -> normalised records -> tokenized examples -> padded batches.

    records.py        Message, SFTRecord, PreferenceRecord, RankingRecord, UnpairedRecord, PromptRecord,
                      Location, DataFormatError, LoadResult
    readers.py        raw rows with file:line from jsonl/json/txt/csv/parquet/datasets
    messages.py       field checks, message lists, Anthropic-HH splitting
    formats.py        the input formats: detection and parsing
    load.py           load_records / load_sft / load_preferences / load_rankings / load_prompts
    chat.py           chat template (the tokenizer's or ours) and trained-on spans
    special_tokens.py ensure_pad_token (pad != eos)
    tokenization.py   records -> examples, truncation policy and counts
    batch.py          TensorBatch, SFTBatch, RankingBatch, PromptBatch
    collate.py        examples -> batches (right padding; left for prompts)
    dataset.py        SFTDataset, RankingDataset, PromptDataset (map-style)
    check.py          `python -m rlhf_ds.data.check PATH` for users

Names are imported lazily, so the checker and the loaders start without torch.
"""
import importlib

_EXPORTS = {
    "records": ["Message", "SFTRecord", "PreferenceRecord", "RankingRecord", "UnpairedRecord", "PromptRecord",
                "Location", "DataFormatError", "InvalidRecord", "LoadResult", "KINDS"],
    "formats": ["FORMATS"],
    "load": ["load_records", "load_sft", "load_preferences", "load_rankings", "load_prompts"],
    "chat": ["ChatFormatter", "ChatTemplateError", "PLAIN_CHAT_TEMPLATE"],
    "special_tokens": ["ensure_pad_token", "check_pad_token"],
    "tokenization": ["SFTExample", "RankingExample", "PromptExample", "TruncationStats",
                     "tokenize_sft", "tokenize_ranking", "tokenize_prompts", "IGNORE_INDEX"],
    "batch": ["TensorBatch", "SFTBatch", "RankingBatch", "PromptBatch"],
    "collate": ["collate_sft", "collate_ranking", "collate_prompts"],
    "dataset": ["SFTDataset", "RankingDataset", "PromptDataset"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'rlhf_ds.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"rlhf_ds.data.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__

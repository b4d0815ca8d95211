"""Pad tokens, padding sides, batch shapes, and the datasets under a DataLoader."""
import pytest
import torch
from torch.utils.data import DataLoader

from rlhf_ds.data import (IGNORE_INDEX, Message, PreferenceRecord, PromptBatch, PromptDataset, PromptRecord,
                          RankingBatch, RankingDataset, RankingRecord, SFTBatch, SFTDataset, SFTRecord,
                          ensure_pad_token, load_records)

U, A = "user", "assistant"


def sft_records():
    return [SFTRecord([Message(U, "hi"), Message(A, "hello")]),
            SFTRecord([Message(U, "tell me a joke about a cat"), Message(A, "the cat sat on the fox and the dog")]),
            SFTRecord([Message(U, "one"), Message(A, "two")])]


# ---------------------------------------------------------------- pad token

def test_ensure_pad_token_adds_a_new_token_when_none_is_reusable(plain_tokenizer):
    tok = plain_tokenizer
    assert tok.pad_token is None
    n = len(tok)
    assert ensure_pad_token(tok) is True
    assert len(tok) == n + 1 and tok.pad_token == "<|pad|>" and tok.pad_token_id == n
    assert tok.pad_token_id != tok.eos_token_id
    assert ensure_pad_token(tok) is False and len(tok) == n + 1     # idempotent


def test_ensure_pad_token_replaces_pad_equal_to_eos(plain_tokenizer):
    tok = plain_tokenizer
    tok.pad_token = tok.eos_token
    assert tok.pad_token_id == tok.eos_token_id
    assert ensure_pad_token(tok) is True
    assert tok.pad_token_id != tok.eos_token_id


def test_ensure_pad_token_reuses_an_unused_reserved_token(plain_tokenizer):
    tok = plain_tokenizer
    tok.add_special_tokens({"additional_special_tokens": [
        "<|reserved_special_token_0|>", "<|reserved_special_token_7|>", "<|reserved_special_token_3|>"]})
    n = len(tok)
    assert ensure_pad_token(tok) is False
    assert tok.pad_token == "<|reserved_special_token_7|>" and len(tok) == n
    assert tok.pad_token_id != tok.eos_token_id


def test_ensure_pad_token_keeps_a_proper_pad(chatml_tokenizer):
    n, pad = len(chatml_tokenizer), chatml_tokenizer.pad_token_id
    assert ensure_pad_token(chatml_tokenizer) is False
    assert (len(chatml_tokenizer), chatml_tokenizer.pad_token_id) == (n, pad)


def test_datasets_refuse_a_missing_or_eos_pad(plain_tokenizer):
    with pytest.raises(ValueError, match="no pad token; call rlhf_ds.data.ensure_pad_token"):
        SFTDataset(sft_records(), plain_tokenizer)
    plain_tokenizer.pad_token = plain_tokenizer.eos_token
    with pytest.raises(ValueError, match="pad token equals its EOS token"):
        PromptDataset([PromptRecord([Message(U, "hi")])], plain_tokenizer)


# ------------------------------------------------------------------ batches

def test_prompt_batch_is_left_padded(padded_plain_tokenizer):
    tok = padded_plain_tokenizer
    records = [PromptRecord([Message(U, "hi")], {"id": 0}),
               PromptRecord([Message(U, "tell me a joke about the moon and the stars")], {"id": 1})]
    ds = PromptDataset(records, tok)
    batch = ds.collate([ds[0], ds[1]])
    assert isinstance(batch, PromptBatch)
    b, p = batch.input_ids.shape
    assert b == 2 and p == len(ds[1].input_ids)
    assert batch.attention_mask[:, -1].tolist() == [1, 1]              # every prompt ends at column P-1
    n0 = len(ds[0].input_ids)
    assert batch.attention_mask[0].tolist() == [0] * (p - n0) + [1] * n0
    assert batch.input_ids[0, :p - n0].tolist() == [tok.pad_token_id] * (p - n0)
    assert batch.input_ids[0, p - n0:].tolist() == ds[0].input_ids
    assert batch.prompts == ["<|user|>\nhi\n<|assistant|>\n", ds.formatter.prompt_text(records[1].messages)]
    assert batch.meta == [{"id": 0}, {"id": 1}]
    assert tok.decode(batch.input_ids[0], skip_special_tokens=False).startswith("<|pad|>")


def test_sft_batch_is_right_padded_with_ignored_labels(padded_plain_tokenizer):
    tok = padded_plain_tokenizer
    ds = SFTDataset(sft_records(), tok, pad_to_multiple_of=8)
    batch = ds.collate([ds[0], ds[1]])
    assert isinstance(batch, SFTBatch)
    t = batch.input_ids.shape[1]
    assert t % 8 == 0 and t >= len(ds[1].input_ids)
    n0 = len(ds[0].input_ids)
    assert batch.attention_mask[0].tolist() == [1] * n0 + [0] * (t - n0)
    assert batch.input_ids[0, n0:].eq(tok.pad_token_id).all()
    assert batch.labels[0, n0:].eq(IGNORE_INDEX).all()
    assert batch.labels[0, :n0].tolist() == ds[0].labels
    # The last real token is EOS, and pad != eos keeps it findable from the ids alone.
    last = (batch.input_ids != tok.pad_token_id).long().cumsum(1).argmax(1)
    assert last.tolist() == (batch.attention_mask.sum(1) - 1).tolist()
    assert batch.input_ids[torch.arange(2), last].tolist() == [tok.eos_token_id] * 2


def test_ranking_batch_mixes_pairs_and_kwise_records(padded_plain_tokenizer):
    tok = padded_plain_tokenizer
    pair = PreferenceRecord([Message(U, "two plus two")], [Message(A, "four")], [Message(A, "five")], margin=2.0)
    kwise = RankingRecord([Message(U, "pick a star")],
                          [[Message(A, "sun")], [Message(A, "moon")], [Message(A, "a river")]], [0, 1, 1])
    ds = RankingDataset([pair, kwise], tok)
    batch = ds.collate([ds[0], ds[1]])
    assert isinstance(batch, RankingBatch)
    b, k, t = batch.input_ids.shape
    assert (b, k) == (2, 3) and batch.attention_mask.shape == batch.action_mask.shape == (2, 3, t)
    assert batch.ranks.tolist() == [[0, 1, -1], [0, 1, 1]]
    assert batch.margins.tolist() == [2.0, 0.0]
    # Chosen first, its response tokens marked.
    ex = ds[0]
    chosen = batch.input_ids[0, 0][batch.attention_mask[0, 0].bool()].tolist()
    assert chosen == ex.prompt_ids + ex.responses[0]
    assert tok.decode(batch.input_ids[0, 0][batch.action_mask[0, 0].bool()]) == "four</s>"
    # The missing third entry of the pair: the prompt alone, nothing to score.
    assert batch.attention_mask[0, 2].sum().item() == len(ex.prompt_ids)
    assert batch.action_mask[0, 2].sum().item() == 0
    # Right padding: every real row starts at column 0.
    assert batch.attention_mask[:, :, 0].eq(1).all()
    assert ds.collate([ds[1]]).margins is None


def test_ranking_num_responses_fixes_k(padded_plain_tokenizer):
    pair = PreferenceRecord([Message(U, "a")], [Message(A, "b")], [Message(A, "c")])
    ds = RankingDataset([pair], padded_plain_tokenizer, num_responses=4)
    assert ds.collate([ds[0]]).input_ids.shape[:2] == (1, 4)
    with pytest.raises(ValueError, match="num_responses=1 but an example has 2 responses"):
        RankingDataset([pair], padded_plain_tokenizer, num_responses=1).collate([ds[0]])


def test_datasets_work_with_a_dataloader(padded_plain_tokenizer, write_jsonl):
    path = write_jsonl("sft.jsonl", [{"prompt": f"question {i}", "response": "answer " * (i + 1)} for i in range(5)])
    ds = SFTDataset(load_records(path, kind="sft"), padded_plain_tokenizer, max_length=24)
    assert len(ds) == 5
    batches = list(DataLoader(ds, batch_size=2, shuffle=False, collate_fn=ds.collate))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert all(isinstance(b, SFTBatch) for b in batches)
    halves = batches[0].to("cpu").split(1)
    assert [h.labels.shape[0] for h in halves] == [1, 1]
    assert halves[1].input_ids[0, :len(ds[1].input_ids)].tolist() == ds[1].input_ids
    assert ds.stats.records == 5 and all(len(e.input_ids) <= 24 for e in ds.examples)
    prompts = PromptDataset(load_records(path, kind="prompt"), padded_plain_tokenizer)
    batch = next(iter(DataLoader(prompts, batch_size=5, collate_fn=prompts.collate)))
    assert batch.meta[4] == {"response": "answer " * 5}
    assert batch.attention_mask[:, -1].eq(1).all()

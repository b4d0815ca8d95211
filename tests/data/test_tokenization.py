"""Chat templates, trained-on spans, EOS/BOS, and the truncation policy, on real tokenizers."""
import pytest

from rlhf_ds.data import (ChatFormatter, ChatTemplateError, IGNORE_INDEX, Message, PreferenceRecord,
                          PromptRecord, RankingRecord, SFTRecord, load_records, tokenize_prompts,
                          tokenize_ranking, tokenize_sft)
from rlhf_ds.data.tokenization import budget

CONVERSATION = [Message("system", "Be brief."), Message("user", "hello how are you"),
                Message("assistant", "fine thanks"), Message("user", "tell me a joke"),
                Message("assistant", "why did the chicken cross the road")]


def labelled_spans(example):
    """Runs of consecutive labelled tokens, as token lists."""
    spans, current = [], []
    for tok, lab in zip(example.input_ids, example.labels):
        if lab == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            assert lab == tok
            current.append(tok)
    return spans + ([current] if current else [])


def test_plain_template_is_the_documented_role_marker_format(plain_tokenizer):
    f = ChatFormatter(plain_tokenizer)
    assert f.uses_plain_template
    assert f.render(CONVERSATION[:4], add_generation_prompt=True) == (
        "<|system|>\nBe brief.\n<|user|>\nhello how are you\n<|assistant|>\nfine thanks</s>\n"
        "<|user|>\ntell me a joke\n<|assistant|>\n")


def test_tokenizer_template_is_used_when_present(chatml_tokenizer):
    f = ChatFormatter(chatml_tokenizer)
    assert not f.uses_plain_template and f.template_source == "tokenizer"
    assert f.prompt_text(CONVERSATION[1:2]) == "<|im_start|>user\nhello how are you<|im_end|>\n<|im_start|>assistant\n"
    assert ChatFormatter(chatml_tokenizer, "plain").template_source == "plain"


def test_labels_cover_exactly_the_assistant_turns_with_the_templates_markers(chatml_tokenizer):
    tok = chatml_tokenizer
    [ex], _ = tokenize_sft([SFTRecord(CONVERSATION)], ChatFormatter(tok))
    spans = [tok.decode(s) for s in labelled_spans(ex)]
    # ChatML ends turns with <|im_end|>, not EOS: EOS is appended to the final target only.
    assert spans == ["fine thanks<|im_end|>", "why did the chicken cross the road<|im_end|></s>"]
    assert ex.input_ids.count(tok.eos_token_id) == 1 and ex.input_ids[-1] == tok.eos_token_id
    full = ChatFormatter(tok).render(CONVERSATION)
    assert tok.decode(ex.input_ids) == full.rstrip() + "</s>"
    unlabelled = tok.decode([t for t, l in zip(ex.input_ids, ex.labels) if l == IGNORE_INDEX])
    assert "Be brief." in unlabelled and "tell me a joke" in unlabelled and "fine" not in unlabelled


def test_plain_template_labels_bos_and_single_eos(plain_tokenizer):
    tok = plain_tokenizer
    [ex], _ = tokenize_sft([SFTRecord(CONVERSATION)], ChatFormatter(tok))
    assert ex.input_ids[0] == tok.bos_token_id and ex.labels[0] == IGNORE_INDEX
    assert [tok.decode(s) for s in labelled_spans(ex)] == ["fine thanks</s>", "why did the chicken cross the road</s>"]
    assert ex.input_ids.count(tok.eos_token_id) == 2 and ex.input_ids[-1] == tok.eos_token_id
    assert ex.prompt_length == len(ChatFormatter(tok).encode_prompt(CONVERSATION[:4]))


def test_loaded_alpaca_record_end_to_end(plain_tokenizer, write_jsonl):
    path = write_jsonl("a.jsonl", [{"instruction": "Explain the sun.", "input": "simple terms", "output": "It is a star."}])
    [ex], _ = tokenize_sft(load_records(path), ChatFormatter(plain_tokenizer))
    assert [plain_tokenizer.decode(s) for s in labelled_spans(ex)] == ["It is a star.</s>"]
    assert plain_tokenizer.decode(ex.input_ids[:ex.prompt_length]) == \
        "<s><|user|>\nExplain the sun.\n\nsimple terms\n<|assistant|>\n"


def test_preference_tokens_share_the_prompt_and_end_with_eos(chatml_tokenizer):
    tok = chatml_tokenizer
    f = ChatFormatter(tok)
    rec = PreferenceRecord([Message("user", "two plus two")], [Message("assistant", "four")],
                           [Message("assistant", "five")], margin=1.0)
    [ex], stats = tokenize_ranking([rec], f)
    assert ex.prompt_ids == f.encode(f.prompt_text(rec.prompt))
    assert [tok.decode(r) for r in ex.responses] == ["four<|im_end|></s>", "five<|im_end|></s>"]
    assert all(set(m) == {1} for m in ex.response_masks)
    assert (ex.ranks, ex.margin, stats.truncated) == ([0, 1], 1.0, 0)


def test_user_turns_inside_a_response_are_not_trained_on(plain_tokenizer):
    tok = plain_tokenizer
    rec = RankingRecord([Message("user", "hi")],
                        [[Message("assistant", "hello"), Message("user", "bye"), Message("assistant", "goodbye")],
                         [Message("assistant", "go away")]], [0, 1])
    [ex], _ = tokenize_ranking([rec], ChatFormatter(tok))
    trained = tok.decode([t for t, m in zip(ex.responses[0], ex.response_masks[0]) if m])
    assert trained == "hello</s>goodbye</s>"
    assert "bye" in tok.decode([t for t, m in zip(ex.responses[0], ex.response_masks[0]) if not m])


def test_template_that_is_not_prefix_stable_is_refused(plain_tokenizer):
    unstable = ("{{ messages | length }}{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}"
                "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(ChatTemplateError, match="message 1 .assistant. as a prefix"):
        ChatFormatter(plain_tokenizer, unstable).segments(CONVERSATION[1:3])


# ------------------------------------------------------------------ truncation

@pytest.mark.parametrize("args,expected", [
    ((10, 5, 64, None), (10, 54)),      # fits
    ((100, 30, 64, None), (34, 30)),    # prompt gives up tokens, response intact
    ((100, 100, 64, None), (32, 32)),   # prompt keeps max_length // 2, response cut
    ((10, 100, 64, None), (10, 54)),    # short prompt kept whole, response cut
    ((100, 10, None, 20), (20, None)),  # max_prompt_length only
    ((50, 50, 64, 40), (32, 32)),       # both limits
])
def test_budget(args, expected):
    assert budget(*args) == expected


def long_words(n, seed=0):
    words = "sun moon star river mountain fox dog cat".split()
    return " ".join(words[(i * 7 + seed) % len(words)] for i in range(n))


def test_sft_truncation_cuts_the_prompt_from_the_left_keeping_bos(padded_plain_tokenizer):
    tok = padded_plain_tokenizer
    f = ChatFormatter(tok)
    rec = SFTRecord([Message("user", long_words(60)), Message("assistant", "short answer")])
    [full], _ = tokenize_sft([rec], f)
    [cut], stats = tokenize_sft([rec], f, max_length=40)
    n_resp = len(full.input_ids) - full.prompt_length
    assert len(cut.input_ids) == 40 and cut.truncated
    assert cut.input_ids[0] == tok.bos_token_id
    assert cut.input_ids[1:] == full.input_ids[-39:] and cut.labels[1:] == full.labels[-39:]
    assert cut.prompt_length == 40 - n_resp and cut.input_ids[-1] == tok.eos_token_id
    assert (stats.records, stats.truncated, stats.prompts_truncated, stats.responses_truncated) == (1, 1, 1, 0)
    assert "1/1 records truncated to max_length=40" in stats.summary()


def test_sft_truncation_cuts_a_long_response_from_the_right_without_eos(padded_plain_tokenizer):
    tok = padded_plain_tokenizer
    f = ChatFormatter(tok)
    records = [SFTRecord([Message("user", long_words(30)), Message("assistant", long_words(80, 3))]),
               SFTRecord([Message("user", "hi"), Message("assistant", "hello")])]
    (full, _), _ = tokenize_sft(records, f)
    (cut, short), stats = tokenize_sft(records, f, max_length=32)
    assert len(cut.input_ids) == 32 and cut.prompt_length == 16
    assert cut.input_ids[16:] == full.input_ids[full.prompt_length:full.prompt_length + 16]
    assert cut.input_ids[-1] != tok.eos_token_id and tok.eos_token_id not in cut.input_ids
    assert not short.truncated and short.input_ids[-1] == tok.eos_token_id
    assert (stats.records, stats.truncated, stats.prompts_truncated, stats.responses_truncated) == (2, 1, 1, 1)


def test_ranking_truncation_cuts_one_shared_prompt(padded_plain_tokenizer):
    f = ChatFormatter(padded_plain_tokenizer)
    rec = RankingRecord([Message("user", long_words(40))],
                        [[Message("assistant", long_words(30, 1))], [Message("assistant", "ok")],
                         [Message("assistant", long_words(5, 2))]], [0, 1, 2])
    [full], _ = tokenize_ranking([rec], f)
    [cut], stats = tokenize_ranking([rec], f, max_length=30, max_prompt_length=20)
    assert len(cut.prompt_ids) == 15 and cut.prompt_ids[1:] == full.prompt_ids[-14:]
    assert [len(r) for r in cut.responses] == [15] + [len(r) for r in full.responses[1:]]
    assert max(len(cut.prompt_ids) + len(r) for r in cut.responses) == 30
    assert (stats.truncated, stats.prompts_truncated, stats.responses_truncated) == (1, 1, 1)


def test_prompt_truncation_keeps_bos_and_the_end(padded_plain_tokenizer):
    tok = padded_plain_tokenizer
    f = ChatFormatter(tok)
    records = [PromptRecord([Message("user", long_words(50))]), PromptRecord([Message("user", "hi")])]
    (full, short_full), _ = tokenize_prompts(records, f)
    limit = len(short_full.input_ids)           # the short prompt just fits
    assert len(full.input_ids) > limit
    (cut, short), stats = tokenize_prompts(records, f, max_prompt_length=limit)
    assert cut.input_ids == [tok.bos_token_id] + full.input_ids[-(limit - 1):]
    assert tok.decode(cut.input_ids).endswith("<|assistant|>\n") and cut.text == tok.decode(cut.input_ids)
    assert short.text == "<|user|>\nhi\n<|assistant|>\n" and not short.truncated
    assert (stats.records, stats.truncated, stats.prompts_truncated) == (2, 1, 1)


def test_limits_are_checked():
    with pytest.raises(ValueError, match="max_length must be at least 2"):
        tokenize_sft([], None, max_length=1)

"""Long multi-turn SFT chats keep their earlier assistant turns as targets whenever the chat fits in
max_length; what does not fit is cut from the left. Real tokenizers (tests/data/conftest.py)."""
import pytest

from rlhf_ds.data import IGNORE_INDEX, ChatFormatter, Message, SFTRecord, tokenize_sft

TOKENIZERS = ["chatml_tokenizer", "padded_plain_tokenizer"]      # no BOS / a BOS kept in front


def words(n, seed):
    vocab = "sun moon star river mountain fox dog cat".split()
    return " ".join(vocab[(i * 5 + seed) % len(vocab)] for i in range(n))


CHAT = SFTRecord([Message("system", "Be brief."), Message("user", words(12, 0)),
                  Message("assistant", words(14, 1)), Message("user", words(10, 2)),
                  Message("assistant", words(14, 3)), Message("user", "tell me a joke"),
                  Message("assistant", words(10, 4))])
ANSWERS = [m.content for m in CHAT.messages if m.role == "assistant"]


def setup(request, name):
    tok = request.getfixturevalue(name)
    f = ChatFormatter(tok)
    [full], _ = tokenize_sft([CHAT], f)
    first = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    return tok, f, full, first


def trained_text(tok, ex):
    return tok.decode([t for t, label in zip(ex.input_ids, ex.labels) if label != IGNORE_INDEX])


@pytest.mark.parametrize("name", TOKENIZERS)
def test_a_chat_that_fits_keeps_every_assistant_turn(request, name):
    tok, f, full, first = setup(request, name)
    n = len(full.input_ids)
    # More context before the last turn than max_prompt_length, but less before the first turn.
    limit = (first + full.prompt_length) // 2
    assert first < limit < full.prompt_length
    [ex], stats = tokenize_sft([CHAT], f, max_length=n, max_prompt_length=limit)
    assert (ex.input_ids, ex.labels, ex.prompt_length, ex.truncated) == (full.input_ids, full.labels,
                                                                           full.prompt_length, False)
    assert all(answer in trained_text(tok, ex) for answer in ANSWERS)
    assert stats.truncated == 0


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("cut_into_first_answer", [False, True])
def test_a_chat_that_does_not_fit_loses_its_earliest_tokens(request, name, cut_into_first_answer):
    tok, f, full, first = setup(request, name)
    n, bos = len(full.input_ids), list(f.bos_ids)
    drop = first + 3 if cut_into_first_answer else 4          # tokens that cannot stay
    max_length = n - drop
    [ex], stats = tokenize_sft([CHAT], f, max_length=max_length, max_prompt_length=first + 5)
    keep = max_length - len(bos)
    assert ex.input_ids == bos + full.input_ids[-keep:]
    assert ex.labels == [IGNORE_INDEX] * len(bos) + full.labels[-keep:]
    assert ex.prompt_length == full.prompt_length - (n - max_length) and ex.truncated
    assert (stats.prompts_truncated, stats.responses_truncated) == (1, 0)
    text = trained_text(tok, ex)
    assert all(answer in text for answer in ANSWERS[1:])
    assert (ANSWERS[0] in text) is not cut_into_first_answer
    assert ex.input_ids[-1] == tok.eos_token_id                # the last turn is whole


@pytest.mark.parametrize("name", TOKENIZERS)
def test_max_prompt_length_bounds_what_precedes_the_first_answer(request, name):
    tok, f, full, first = setup(request, name)
    bos = list(f.bos_ids)
    limit = first - 4                                          # the opening turns are longer than this
    [ex], stats = tokenize_sft([CHAT], f, max_length=len(full.input_ids), max_prompt_length=limit)
    head = limit - len(bos)
    assert ex.input_ids == bos + full.input_ids[first - head:]
    assert ex.labels == [IGNORE_INDEX] * len(bos) + full.labels[first - head:]
    assert all(answer in trained_text(tok, ex) for answer in ANSWERS)
    assert ex.truncated and stats.prompts_truncated == 1

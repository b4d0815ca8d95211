"""Detection and normalisation of every input format, on real JSONL files."""
import pytest

from rlhf_ds.data import (DataFormatError, Message, PreferenceRecord, PromptRecord, RankingRecord,
                          SFTRecord, UnpairedRecord, load_records)
from rlhf_ds.data.formats import FORMATS
from rlhf_ds.data.messages import split_hh

U, A, S = "user", "assistant", "system"


def msgs(*pairs):
    return [Message(r, c) for r, c in pairs]


HH_CHOSEN = ("\n\nHuman: What is the capital of France?\n\nAssistant: Paris.\n\n"
             "Human: And of Italy?\n\nAssistant: I think it is Rome.")
HH_REJECTED = ("\n\nHuman: What is the capital of France?\n\nAssistant: Paris.\n\n"
               "Human: And of Italy?\n\nAssistant: I think it is Paris too.")

# (row, kind, format, expected record)
CASES = [
    ({"prompt": "Tell me a joke", "response": "Why did the chicken cross the road?"}, "sft",
     "prompt_response", SFTRecord(msgs((U, "Tell me a joke"), (A, "Why did the chicken cross the road?")))),
    ({"instruction": "Name a color.", "input": "", "output": "Blue."}, "sft", "alpaca",
     SFTRecord(msgs((U, "Name a color."), (A, "Blue.")))),
    ({"instruction": "Translate.", "input": "bonjour", "output": "hello"}, "sft", "alpaca",
     SFTRecord(msgs((U, "Translate.\n\nbonjour"), (A, "hello")))),
    ({"instruction": "Count.", "output": "one two"}, "sft", "alpaca",       # Belle: no input at all
     SFTRecord(msgs((U, "Count."), (A, "one two")))),
    ({"messages": [{"role": S, "content": "Be brief."}, {"role": U, "content": "hi"},
                   {"role": A, "content": "hello"}, {"role": U, "content": "bye"},
                   {"role": A, "content": "goodbye"}]}, "sft", "chat",
     SFTRecord(msgs((S, "Be brief."), (U, "hi"), (A, "hello"), (U, "bye"), (A, "goodbye")))),
    ({"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": 2}, "preference", "prompt_chosen_rejected",
     PreferenceRecord(msgs((U, "2+2?")), msgs((A, "4")), msgs((A, "5")), 2.0)),
    ({"question": "2+2?", "chosen": "4", "rejected": "5"}, "preference", "question_chosen_rejected",
     PreferenceRecord(msgs((U, "2+2?")), msgs((A, "4")), msgs((A, "5")))),
    ({"prompt": [{"role": U, "content": "2+2?"}], "chosen": [{"role": A, "content": "4"}],
      "rejected": [{"role": A, "content": "5"}]}, "preference", "prompt_chosen_rejected",
     PreferenceRecord(msgs((U, "2+2?")), msgs((A, "4")), msgs((A, "5")))),
    ({"prompt": [{"role": U, "content": "2+2?"}],            # responses repeat the prompt
      "chosen": [{"role": U, "content": "2+2?"}, {"role": A, "content": "4"}],
      "rejected": [{"role": U, "content": "2+2?"}, {"role": A, "content": "5"}]},
     "preference", "prompt_chosen_rejected", PreferenceRecord(msgs((U, "2+2?")), msgs((A, "4")), msgs((A, "5")))),
    ({"chosen": [{"role": U, "content": "2+2?"}, {"role": A, "content": "4"}],
      "rejected": [{"role": U, "content": "2+2?"}, {"role": A, "content": "5"}]}, "preference", "chat_pair",
     PreferenceRecord(msgs((U, "2+2?")), msgs((A, "4")), msgs((A, "5")))),
    ({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, "preference", "hh",
     PreferenceRecord(msgs((U, "What is the capital of France?"), (A, "Paris."), (U, "And of Italy?")),
                      msgs((A, "I think it is Rome.")), msgs((A, "I think it is Paris too.")))),
    ({"prompt": "\n\nHuman: Say hi\n\nAssistant:", "response": " Hi!", "chosen": " Hi!", "rejected": " No."},
     "preference", "rm_static", PreferenceRecord(msgs((U, "Say hi")), msgs((A, "Hi!")), msgs((A, "No.")))),
    ({"prompt": "Pick", "responses": ["b", "c", "a"], "ranks": [1, 2, 0]}, "ranking", "ranking",
     RankingRecord(msgs((U, "Pick")), [msgs((A, "a")), msgs((A, "b")), msgs((A, "c"))], [0, 1, 2])),
    ({"prompt": "Pick", "responses": ["x", "y", "z"]}, "ranking", "ranking",
     RankingRecord(msgs((U, "Pick")), [msgs((A, "x")), msgs((A, "y")), msgs((A, "z"))], [0, 1, 2])),
    ({"prompt": "2+2?", "completion": "4", "label": True}, "unpaired", "kto",
     UnpairedRecord(msgs((U, "2+2?")), msgs((A, "4")), True)),
    ({"prompt": [{"role": U, "content": "2+2?"}], "completion": [{"role": A, "content": "5"}], "label": False},
     "unpaired", "kto", UnpairedRecord(msgs((U, "2+2?")), msgs((A, "5")), False)),
    ("What is 2+2?", "prompt", "prompt_text", PromptRecord(msgs((U, "What is 2+2?")))),
    ({"prompt": "What is 2+2?", "answer": "4"}, "prompt", "prompt_field",
     PromptRecord(msgs((U, "What is 2+2?")), {"answer": "4"})),
    ({"messages": [{"role": S, "content": "Be brief."}, {"role": U, "content": "hi"}]}, "prompt",
     "prompt_messages", PromptRecord(msgs((S, "Be brief."), (U, "hi")))),
]


@pytest.mark.parametrize("row,kind,fmt,expected", CASES, ids=[f"{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_every_format_is_detected_and_normalised(write_jsonl, row, kind, fmt, expected):
    path = write_jsonl("data.jsonl", [row, row])
    result = load_records(path)
    assert (result.kind, result.format) == (kind, fmt)
    assert result.records == [expected, expected]
    # The explicit override gives the same records.
    assert load_records(path, format=fmt).records == [expected, expected]


def test_every_format_has_a_case():
    assert {c[2] for c in CASES} == set(FORMATS)


def test_hh_prefix_is_the_last_shared_assistant_turn():
    prompt, chosen, rejected = split_hh(HH_CHOSEN, HH_REJECTED)
    # Both responses start with "I think it is": the shared prefix goes further than
    # the turn marker, but the prompt must stop at the marker.
    assert prompt == ("\n\nHuman: What is the capital of France?\n\nAssistant: Paris.\n\n"
                      "Human: And of Italy?\n\nAssistant:")
    assert (chosen, rejected) == (" I think it is Rome.", " I think it is Paris too.")


def test_hh_dialogues_that_diverge_earlier_keep_later_turns_in_the_response(write_jsonl):
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: goodbye"
    rejected = "\n\nHuman: hi\n\nAssistant: go away"
    rec = load_records(write_jsonl("hh.jsonl", [{"chosen": chosen, "rejected": rejected}])).records[0]
    assert rec.prompt == msgs((U, "hi"))
    assert rec.chosen == msgs((A, "hello"), (U, "bye"), (A, "goodbye"))
    assert rec.rejected == msgs((A, "go away"))


@pytest.mark.parametrize("chosen,rejected,error", [
    ("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: a\n\nAssistant: b", "are identical"),
    ("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: c\n\nAssistant: b", "share no '\\n\\nAssistant:'"),
    ("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: a\n\nAssistant:", "'rejected': the response after the shared prompt is empty"),
])
def test_hh_errors(write_jsonl, chosen, rejected, error):
    path = write_jsonl("hh.jsonl", [{"chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": "\n\nHuman: x\n\nAssistant: z"},
                                    {"chosen": chosen, "rejected": rejected}])
    with pytest.raises(DataFormatError) as e:
        load_records(path)
    assert str(e.value).startswith(f"{path}:2: ") and error in str(e.value)


def test_ranks_are_sorted_stably_and_made_dense(write_jsonl):
    path = write_jsonl("r.jsonl", [{"prompt": "p", "responses": ["w", "x", "y", "z"], "ranks": [7, 2, 7, 5]}])
    rec = load_records(path).records[0]
    assert [r[0].content for r in rec.responses] == ["x", "z", "w", "y"]
    assert rec.ranks == [0, 1, 2, 2]


@pytest.mark.parametrize("row,error", [
    ({"prompt": "p", "responses": ["a", "b"], "ranks": [0]}, "field 'ranks' has 1 entries but 'responses' has 2"),
    ({"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1.5]}, "field 'ranks'[1]: expected a non-negative integer, got 1.5"),
    ({"prompt": "p", "responses": ["a", "b"], "ranks": [0, "1"]}, "field 'ranks'[1]: expected a non-negative integer, got '1'"),
    ({"prompt": "p", "responses": ["a", "b"], "ranks": [True, 0]}, "field 'ranks'[0]: expected a non-negative integer, got True"),
    ({"prompt": "p", "responses": ["a", "b"], "ranks": [0, -1]}, "field 'ranks'[1]: expected a non-negative integer, got -1"),
    ({"prompt": "p", "responses": ["a", "b"], "ranks": "0,1"}, "field 'ranks': expected a list of integers, got string"),
    ({"prompt": "p", "responses": ["a"]}, "field 'responses': need at least 2 responses to rank, got 1"),
    ({"prompt": "p", "responses": ["a", 3]}, "field 'responses[1]': expected a string or a list of messages, got int"),
])
def test_ranking_validation(write_jsonl, row, error):
    path = write_jsonl("r.jsonl", [{"prompt": "ok", "responses": ["a", "b"]}, row])
    with pytest.raises(DataFormatError) as e:
        load_records(path)
    assert str(e.value) == f"{path}:2: {error}"


@pytest.mark.parametrize("row,error", [
    ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "field 'margin': expected a finite number, got 'big'"),
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, "'chosen' and 'rejected' are identical"),
    ({"prompt": "p", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
     "field 'chosen': a response must start with an assistant message, got role 'user'"),
    ({"prompt": [{"role": "bot", "content": "a"}], "chosen": "a", "rejected": "b"},
     "field 'prompt'[0]: unknown role 'bot' (allowed: system, user, assistant)"),
    ({"prompt": [{"role": "user", "content": 5}], "chosen": "a", "rejected": "b"},
     "field 'prompt'[0].content: expected a string, got int"),
])
def test_preference_validation(write_jsonl, row, error):
    path = write_jsonl("p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataFormatError) as e:
        load_records(path)
    assert str(e.value) == f"{path}:2: {error}"


def test_chat_must_end_with_assistant(write_jsonl):
    path = write_jsonl("c.jsonl", [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}]}])
    with pytest.raises(DataFormatError, match=r":2: field 'messages': the last message must be from the assistant"):
        load_records(path, kind="sft")


def test_unknown_format_and_kind_list_the_allowed_values(write_jsonl):
    path = write_jsonl("a.jsonl", [{"prompt": "a", "response": "b"}])
    with pytest.raises(ValueError) as e:
        load_records(path, format="sharegpt")
    assert "unknown format 'sharegpt'" in str(e.value)
    assert all(name in str(e.value) for name in FORMATS)
    with pytest.raises(ValueError, match="unknown kind 'rm'; allowed: sft, preference, ranking, unpaired, prompt"):
        load_records(path, kind="rm")
    with pytest.raises(ValueError, match="format 'hh' holds preference data, which cannot be loaded as sft"):
        load_records(path, kind="sft", format="hh")


def test_explicit_format_overrides_detection(write_jsonl):
    path = write_jsonl("q.jsonl", [{"question": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataFormatError, match=r"q.jsonl:1: missing field 'prompt'"):
        load_records(path, format="prompt_chosen_rejected")


def test_kind_converts_pairs_to_rankings_and_labelled_data_to_prompts(write_jsonl):
    path = write_jsonl("p.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": 1.5, "id": 7}])
    ranking = load_records(path, kind="ranking")
    assert (ranking.kind, ranking.format) == ("ranking", "prompt_chosen_rejected")
    assert ranking.records == [RankingRecord(msgs((U, "2+2?")), [msgs((A, "4")), msgs((A, "5"))], [0, 1], 1.5)]
    prompts = load_records(path, kind="prompt")
    assert prompts.records == [PromptRecord(msgs((U, "2+2?")),
                                            {"chosen": "4", "rejected": "5", "margin": 1.5, "id": 7})]
    sft = write_jsonl("s.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "yo"}]}])
    assert load_records(sft, kind="prompt").records == [PromptRecord(msgs((U, "hi")))]


def test_wrong_kind_says_what_the_data_looks_like(write_jsonl):
    path = write_jsonl("p.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}])
    with pytest.raises(DataFormatError) as e:
        load_records(path, kind="sft")
    assert str(e.value).startswith(f"{path}:1: no sft format matches this record (keys: chosen, prompt, rejected)")
    assert "looks like preference data (format prompt_chosen_rejected)" in str(e.value)


def test_detection_follows_the_majority_of_rows(write_jsonl):
    # The first row lacks 'rejected' and alone looks like something else; the file
    # is still read as preference data and that row is the one reported.
    path = write_jsonl("p.jsonl", [{"prompt": "a", "chosen": "b", "response": "b"},
                                   {"prompt": "a", "chosen": "b", "rejected": "c"},
                                   {"prompt": "d", "chosen": "e", "rejected": "f"}])
    result = load_records(path, skip_invalid=True)
    assert (result.format, len(result.records)) == ("prompt_chosen_rejected", 2)
    assert result.errors == [(1, "missing field 'rejected'")]

"""Every source type, and the file:line of every kind of bad record."""
import json
import pickle

import pandas as pd
import pytest

from rlhf_ds.data import DataFormatError, Message, PromptRecord, load_records
from rlhf_ds.data.records import Location

PAIRS = [{"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)]


def contents(result):
    return [(r.prompt[0].content, r.chosen[0].content, r.rejected[0].content) for r in result.records]


EXPECTED = [(f"question {i}", f"good {i}", f"bad {i}") for i in range(4)]


# ----------------------------------------------------------------- JSON / JSONL

def test_jsonl_broken_line_missing_field_and_wrong_type_name_their_line(write_jsonl):
    rows = [PAIRS[0], '{"prompt": "x", "chosen": "y", ', PAIRS[1], {"prompt": "a", "chosen": "b"},
            {"prompt": "a", "chosen": 3, "rejected": "c"}, PAIRS[2]]
    path = write_jsonl("bad.jsonl", rows)
    with pytest.raises(DataFormatError) as e:
        load_records(path)
    assert isinstance(e.value, ValueError)
    assert str(e.value).startswith(f"{path}:2: invalid JSON: ")
    assert e.value.location == Location(path, 2) and e.value.reason.startswith("invalid JSON")
    again = pickle.loads(pickle.dumps(e.value))
    assert (str(again), again.location) == (str(e.value), e.value.location)

    result = load_records(path, skip_invalid=True)
    assert contents(result) == EXPECTED[:3]
    assert result.num_invalid == 3
    assert [line for line, _ in result.errors] == [2, 4, 5]
    assert result.errors[1] == (4, "missing field 'rejected'")
    assert result.errors[2] == (5, "field 'chosen': expected a string or a list of messages, got int")
    assert str(result.invalid[2].location) == f"{path}:5"


def test_each_error_alone_stops_loading_with_its_line(write_jsonl):
    for bad, message in [({"prompt": "a", "chosen": "b"}, "missing field 'rejected'"),
                         ({"prompt": ["a"], "chosen": "b", "rejected": "c"},
                          "field 'prompt'[0]: expected an object with 'role' and 'content', got string"),
                         ('{"prompt": "a" "chosen": "b"}', "invalid JSON: Expecting ',' delimiter (column 16)")]:
        path = write_jsonl("one.jsonl", [PAIRS[0], PAIRS[1], "", bad])
        with pytest.raises(DataFormatError) as e:
            load_records(path)
        assert str(e.value) == f"{path}:4: {message}"


def test_blank_lines_are_skipped_and_counted(write_jsonl):
    path = write_jsonl("b.jsonl", ["", PAIRS[0], "   ", "", PAIRS[1]])
    result = load_records(path)
    assert (len(result), result.blank_lines, result.num_invalid) == (2, 3, 0)


def test_json_array_reports_the_line_where_each_record_starts(tmp_path):
    rows = [PAIRS[0], PAIRS[1], {"prompt": "q", "chosen": "c"}, PAIRS[2]]
    text = json.dumps(rows, indent=2)
    path = tmp_path / "data.json"
    path.write_text(text)
    # Line of the third element's opening brace, counted independently.
    lines = text.split("\n")
    opening = [i + 1 for i, line in enumerate(lines) if line.strip() == "{"]
    assert len(opening) == 4
    with pytest.raises(DataFormatError) as e:
        load_records(str(path))
    assert str(e.value) == f"{path}:{opening[2]}: missing field 'rejected'"
    result = load_records(str(path), skip_invalid=True)
    assert contents(result) == EXPECTED[:3] and result.errors == [(opening[2], "missing field 'rejected'")]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".txt"])   # .json: JSON lines under a .json name
def test_a_line_that_is_not_utf8_is_invalid_not_a_prompt(tmp_path, suffix):
    # In a prompt file, a line that fails to parse as JSON may be plain text; a line that is not
    # UTF-8 must not become a prompt full of replacement characters.
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(b'{"prompt": "describe the cat"}\n\xff\xfe bad bytes\n{"prompt": "the sun"}\n')
    with pytest.raises(DataFormatError) as e:
        load_records(str(path), "prompt")
    assert str(e.value).startswith(f"{path}:2: not valid UTF-8")
    result = load_records(str(path), "prompt", skip_invalid=True)
    assert [line for line, _ in result.errors] == [2]
    assert len(result.records) == 2
    assert all("\ufffd" not in r.messages[0].content for r in result.records)


def test_broken_json_array_is_fatal_even_when_skipping(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"prompt": "a", "response": "b"},\n  {"prompt": "c", "response": }\n]\n')
    for skip in (False, True):
        with pytest.raises(DataFormatError, match=r"broken.json:3: invalid JSON in array element 1"):
            load_records(str(path), skip_invalid=skip)


def test_a_single_pretty_printed_json_object_is_explained(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": PAIRS}, indent=2))
    with pytest.raises(DataFormatError) as e:
        load_records(str(path))
    assert str(e.value) == (f"{path}:1: the file is a single JSON object (keys: data); "
                            "expected a JSON array of records or one JSON object per line")


def test_json_lines_in_a_json_file(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text("\n".join(json.dumps(p) for p in PAIRS) + "\n")
    assert contents(load_records(str(path))) == EXPECTED


# ------------------------------------------------------------------ CSV / parquet

def test_csv_errors_name_the_physical_line_despite_multiline_cells(tmp_path, cache_dir):
    # Row 2 has a quoted prompt over three lines, so the bad row 3 starts on line 6.
    text = ('prompt,chosen,rejected,margin\n'
            'q1,c1,r1,0.5\n'
            '"multi\nline\nprompt",c2,r2,1\n'
            'q3,c3,,2\n'
            'q4,c4,r4,\n')
    path = tmp_path / "pairs.csv"
    path.write_text(text)
    with pytest.raises(DataFormatError) as e:
        load_records(str(path), cache_dir=cache_dir)
    assert str(e.value) == f"{path}:6: missing field 'rejected'"
    result = load_records(str(path), skip_invalid=True, cache_dir=cache_dir)
    assert result.format == "prompt_chosen_rejected"
    assert [r.prompt[0].content for r in result.records] == ["q1", "multi\nline\nprompt", "q4"]
    assert [r.margin for r in result.records] == [0.5, 1.0, None]


def test_csv_alpaca_with_empty_input(tmp_path, cache_dir):
    path = tmp_path / "alpaca.csv"
    pd.DataFrame({"instruction": ["Say hi", "Add"], "input": ["", "1 and 2"],
                  "output": ["hi", "3"]}).to_csv(path, index=False)
    result = load_records(str(path), cache_dir=cache_dir)
    assert result.format == "alpaca"
    assert [m.content for r in result.records for m in r.messages] == ["Say hi", "hi", "Add\n\n1 and 2", "3"]


def test_parquet_rows_are_numbered_from_zero(tmp_path, cache_dir):
    path = tmp_path / "pairs.parquet"
    rows = PAIRS[:2] + [{"prompt": "q", "chosen": "c", "rejected": None}] + PAIRS[2:]
    pd.DataFrame(rows).to_parquet(path)
    with pytest.raises(DataFormatError) as e:
        load_records(str(path), cache_dir=cache_dir)
    assert str(e.value) == f"{path}:row 2: missing field 'rejected'"
    result = load_records(str(path), skip_invalid=True, cache_dir=cache_dir)
    assert contents(result) == EXPECTED and result.errors == [(2, "missing field 'rejected'")]
    assert result.invalid[0].as_dict()["unit"] == "row"


def test_parquet_with_message_lists(tmp_path, cache_dir):
    path = tmp_path / "chat.parquet"
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    pd.DataFrame({"messages": [conv, conv[:1] + [{"role": "assistant", "content": "hey"}]]}).to_parquet(path)
    result = load_records(str(path), cache_dir=cache_dir)
    assert result.format == "chat"
    assert result.records[1].messages == [Message("user", "hi"), Message("assistant", "hey")]


# -------------------------------------------------------- datasets directories

def test_dataset_saved_to_disk_and_dataset_dict(tmp_path):
    import datasets
    ds = datasets.Dataset.from_list(PAIRS)
    ds.save_to_disk(str(tmp_path / "single"))
    assert contents(load_records(str(tmp_path / "single"))) == EXPECTED
    datasets.DatasetDict({"train": ds.select(range(3)), "test": ds.select([3])}).save_to_disk(str(tmp_path / "dict"))
    assert contents(load_records(str(tmp_path / "dict"))) == EXPECTED[:3]
    assert contents(load_records(str(tmp_path / "dict"), split="test")) == EXPECTED[3:]
    with pytest.raises(ValueError, match="no split 'validation'; splits: train, test"):
        load_records(str(tmp_path / "dict"), split="validation")


def test_saved_dataset_errors_name_the_row(tmp_path):
    import datasets
    rows = [dict(p) for p in PAIRS]
    rows[3]["chosen"] = ""
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataFormatError) as e:
        load_records(str(tmp_path / "saved"))
    assert str(e.value) == f"{tmp_path / 'saved'}:row 3: field 'chosen' is empty"


def test_folder_of_data_files_loads_through_load_dataset(tmp_path, cache_dir):
    folder = tmp_path / "hub_like"
    folder.mkdir()
    pd.DataFrame(PAIRS[:3]).to_parquet(folder / "train.parquet")
    pd.DataFrame(PAIRS[3:]).to_parquet(folder / "test.parquet")
    assert contents(load_records(str(folder), cache_dir=cache_dir)) == EXPECTED[:3]
    assert contents(load_records(str(folder), split="test", cache_dir=cache_dir)) == EXPECTED[3:]


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_records(str(tmp_path / "nope.jsonl"))
    (tmp_path / "data.xml").write_text("<x/>")
    with pytest.raises(ValueError, match=r"unsupported file type '.xml'"):
        load_records(str(tmp_path / "data.xml"))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match=r"no records found \(2 blank lines\)"):
        load_records(str(tmp_path / "empty.jsonl"))


# ------------------------------------------------------------------------ prompts

def test_prompt_file_mixes_objects_json_strings_and_plain_lines(write_jsonl):
    path = write_jsonl("prompts.jsonl", [
        {"prompt": "What is two plus two?", "answer": "4"},
        "",
        json.dumps("Tell me a joke."),
        "Write a poem about the sun.",
        "   ",
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
    ])
    result = load_records(path, kind="prompt")
    assert result.blank_lines == 2 and result.num_invalid == 0
    assert result.records == [
        PromptRecord([Message("user", "What is two plus two?")], {"answer": "4"}),
        PromptRecord([Message("user", "Tell me a joke.")]),
        PromptRecord([Message("user", "Write a poem about the sun.")]),
        PromptRecord([Message("system", "Be brief."), Message("user", "Hi")]),
    ]
    assert load_records(path).kind == "prompt"        # detected without being told


def test_prompt_file_line_that_looks_like_json_is_an_error(write_jsonl):
    path = write_jsonl("prompts.jsonl", [{"prompt": "a"}, "", '{"prompt": "b"', {"prompt": 5}])
    result = load_records(path, kind="prompt", skip_invalid=True)
    assert result.blank_lines == 1
    assert [line for line, _ in result.errors] == [3, 4]
    assert result.errors[0][1].startswith("invalid JSON")
    assert result.errors[1][1] == "field 'prompt': expected a string or a list of messages, got int"


def test_txt_prompts_one_per_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("first prompt\n\nsecond {not json}\n")
    result = load_records(str(path))
    assert (result.kind, result.format, result.blank_lines) == ("prompt", "prompt_text", 1)
    assert [r.messages[0].content for r in result.records] == ["first prompt", "second {not json}"]

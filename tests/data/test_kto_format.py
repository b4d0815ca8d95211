"""The unpaired KTO format {prompt, completion, label}: labels, errors with file and line, the checker."""
import json

import pytest

from rlhf_ds.data import DataFormatError, Message, UnpairedRecord, load_records

from .test_check_cli import run_json

ROWS = [{"prompt": "2+2?", "completion": "4", "label": True},
        {"prompt": "2+3?", "completion": "6", "label": False}]


def test_labels_from_json_and_csv_text(write_jsonl, tmp_path):
    path = write_jsonl("kto.jsonl", ROWS + [{"prompt": "1+1?", "completion": "2", "label": 1}])
    result = load_records(path, kind="unpaired")
    assert result.format == "kto" and [r.desirable for r in result.records] == [True, False, True]
    assert result.records[0] == UnpairedRecord([Message("user", "2+2?")], [Message("assistant", "4")], True)
    csv = tmp_path / "kto.csv"
    csv.write_text("prompt,completion,label\n2+2?,4,true\n2+3?,6,False\n1+1?,2,0\n", encoding="utf-8")
    assert [r.desirable for r in load_records(str(csv)).records] == [True, False, False]


def test_prompts_of_kto_data_drive_generation(write_jsonl):
    prompts = load_records(write_jsonl("kto.jsonl", ROWS), kind="prompt").records
    assert [p.messages[0].content for p in prompts] == ["2+2?", "2+3?"]


@pytest.mark.parametrize("bad,error", [
    ({"prompt": "2+2?", "completion": "4", "label": "maybe"}, "field 'label': expected true (desirable) or false"),
    ({"prompt": "2+2?", "completion": "4", "label": 2}, "field 'label': expected true"),
    ({"prompt": "2+2?", "completion": "", "label": True}, "field 'completion' is empty"),
    ({"prompt": "2+2?", "completion": "4", "label": None}, "missing field 'label'"),
])
def test_a_malformed_record_names_its_file_and_line(write_jsonl, bad, error):
    path = write_jsonl("kto.jsonl", ROWS + ["", bad])          # line 3 is blank, the bad record is line 4
    with pytest.raises(DataFormatError) as e:
        load_records(path, kind="unpaired")
    assert str(e.value).startswith(f"{path}:4: {error}")


def test_checker_reports_kto_records_with_their_line(write_jsonl, tmp_path, tokenizer_dirs):
    path = write_jsonl("kto.jsonl", ROWS + [{"prompt": "x", "completion": "y", "label": "yes"}])
    code, out = run_json(path, tmp=tmp_path)
    assert code == 1 and (out["kind"], out["format"], out["records"]) == ("unpaired", "kto", 2)
    assert out["invalid"][0]["line"] == 3 and "field 'label'" in out["invalid"][0]["error"]
    code, out = run_json(path, "--kind", "unpaired", "--skip-invalid", "--tokenizer", tokenizer_dirs["chatml"],
                         "--max-length", "12", tmp=tmp_path)
    assert code == 0 and out["tokens"]["full"]["max"] > out["tokens"]["prompt"]["max"]
    assert json.dumps(out)    # one JSON object

"""CSV cells are the text they hold: no value is guessed to be null or a number."""
import pytest

from rlhf_ds.data import DataFormatError, load_records

# (as written in the file, the text it holds)
CELLS = [("NA", "NA"), ("None", "None"), ('"None"', "None"), ("n/a", "n/a"), ("4", "4"), ("007", "007"),
         ("0.50", "0.50"), ("null", "null"), ("NaN", "NaN"), ("true", "true")]


def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("written,text", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("skip_invalid", [False, True])
def test_a_cell_is_its_text(tmp_path, written, text, skip_invalid):
    # Whole columns of such values: a type guesser would make the column null or numeric.
    path = write(tmp_path, f"prompt,response\n{written},{written}\n{written},{written}\n")
    result = load_records(path, kind="sft", skip_invalid=skip_invalid)
    assert result.invalid == [] and len(result.records) == 2
    assert [[m.content for m in r.messages] for r in result.records] == [[text, text], [text, text]]


def test_numeric_answers_stay_text_in_prompt_metadata(tmp_path):
    path = write(tmp_path, "prompt,answer\nseven?,007\nhalf?,0.50\nfour?,4\nnone?,None\n")
    result = load_records(path, kind="prompt")
    assert [r.meta["answer"] for r in result.records] == ["007", "0.50", "4", "None"]


def test_margin_text_is_read_as_a_number(tmp_path):
    path = write(tmp_path, "prompt,chosen,rejected,margin\nq,a,b,0.50\nq,a,b,\nq,a,b,much\n")
    with pytest.raises(DataFormatError, match=r":4: field 'margin': expected a finite number, got 'much'"):
        load_records(path, kind="preference")
    result = load_records(path, kind="preference", skip_invalid=True)
    assert [r.margin for r in result.records] == [0.5, None]          # an empty cell is a missing field
    assert [(i.line, i.error) for i in result.invalid] == [
        (4, "field 'margin': expected a finite number, got 'much'")]


def test_rows_with_extra_cells_are_invalid_and_short_rows_miss_fields(tmp_path):
    path = write(tmp_path, "prompt,response\n\nq1,a1\nq2,a2,extra\nq3\n")
    with pytest.raises(DataFormatError, match=r":4: 3 cells, but the header names 2 columns"):
        load_records(path, kind="sft")
    result = load_records(path, kind="sft", skip_invalid=True)
    assert len(result.records) == 1 and result.blank_lines == 1
    assert [(i.line, i.error) for i in result.invalid] == [
        (4, "3 cells, but the header names 2 columns"), (5, "missing field 'response'")]


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    path = write(tmp_path, "prompt,response,prompt\nq,a,b\n")
    with pytest.raises(DataFormatError, match=r":1: the CSV header names column 'prompt' more than once"):
        load_records(path, kind="sft")

"""`python -m rlhf_ds.data.check` as a user runs it: a subprocess, real files."""
import json
import os
import subprocess
import sys

from rlhf_ds.data import ChatFormatter, load_records, tokenize_ranking
from rlhf_ds.data.check import describe

GOOD = [{"prompt": f"question {i}", "chosen": f"the good answer {i}", "rejected": "bad"} for i in range(5)]


def run_check(*args, cwd=None, tmp=None):
    env = dict(os.environ)
    if tmp is not None:
        env["HF_DATASETS_CACHE"] = str(tmp / "hf_cache")
    proc = subprocess.run([sys.executable, "-m", "rlhf_ds.data.check", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    return proc


def run_json(*args, tmp=None):
    proc = run_check(*args, "--json", tmp=tmp)
    return proc.returncode, json.loads(proc.stdout)     # exactly one JSON object on stdout


def test_valid_file(write_jsonl, tmp_path):
    path = write_jsonl("pairs.jsonl", GOOD[:2] + [""] + GOOD[2:])
    code, out = run_json(path, tmp=tmp_path)
    assert code == 0
    assert (out["kind"], out["format"], out["records"], out["invalid"], out["blank_lines"]) == \
        ("preference", "prompt_chosen_rejected", 5, [], 1)
    assert out["tokens"] is None


def test_invalid_records_are_all_listed_and_fail_unless_skipped(write_jsonl, tmp_path):
    path = write_jsonl("pairs.jsonl", [GOOD[0], "{oops", GOOD[1], {"prompt": "x", "chosen": "y"},
                                       {"prompt": "x", "chosen": "y", "rejected": 1}])
    code, out = run_json(path, tmp=tmp_path)
    assert code == 1 and out["records"] == 2
    assert [(i["line"], i["where"]) for i in out["invalid"]] == [(2, f"{path}:2"), (4, f"{path}:4"), (5, f"{path}:5")]
    assert out["invalid"][0]["error"].startswith("invalid JSON")
    assert out["invalid"][1]["error"] == "missing field 'rejected'"
    assert out["invalid"][2]["error"] == "field 'rejected': expected a string or a list of messages, got int"
    code, out = run_json(path, "--skip-invalid", tmp=tmp_path)
    assert code == 0 and out["records"] == 2 and len(out["invalid"]) == 3

    text = run_check(path, tmp=tmp_path)
    assert text.returncode == 1
    assert f"{path}:4: missing field 'rejected'" in text.stdout
    assert "format:  prompt_chosen_rejected" in text.stdout


def test_kind_and_format_options(write_jsonl, tmp_path):
    path = write_jsonl("prompts.jsonl", ["a plain prompt", {"prompt": "another"}, "", json.dumps("a string")])
    code, out = run_json(path, tmp=tmp_path)
    assert code == 0 and (out["kind"], out["records"], out["blank_lines"]) == ("prompt", 3, 1)
    pairs = write_jsonl("pairs.jsonl", GOOD)
    code, out = run_json(pairs, "--kind", "prompt", tmp=tmp_path)
    assert code == 0 and (out["kind"], out["format"], out["records"]) == ("prompt", "prompt_chosen_rejected", 5)
    code, out = run_json(pairs, "--kind", "sft", tmp=tmp_path)
    assert code == 1 and out["records"] == 0 and "looks like preference data" in out["invalid"][0]["error"]
    code, out = run_json(pairs, "--format", "nonsense", tmp=tmp_path)
    assert code == 2 and "unknown format 'nonsense'; allowed: rm_static," in out["error"]
    code, out = run_json(str(tmp_path / "missing.jsonl"), tmp=tmp_path)
    assert code == 2 and "no such file" in out["error"]


def test_token_statistics_and_truncation(write_jsonl, tmp_path, tokenizer_dirs, chatml_tokenizer):
    path = write_jsonl("pairs.jsonl", GOOD)
    code, out = run_json(path, "--tokenizer", tokenizer_dirs["chatml"], "--max-length", "16", tmp=tmp_path)
    assert code == 0
    examples, _ = tokenize_ranking(load_records(path), ChatFormatter(chatml_tokenizer))
    prompt = [len(e.prompt_ids) for e in examples]
    full = [len(e.prompt_ids) + len(r) for e in examples for r in e.responses]
    assert out["tokens"]["template"] == "tokenizer"
    assert out["tokens"]["prompt"] == describe(prompt)
    assert out["tokens"]["full"] == describe(full)
    stats = out["tokens"]["full"]
    assert stats["min"] <= stats["p50"] <= stats["p95"] <= stats["max"] and stats["max"] > 16
    truncation = out["tokens"]["truncation"]
    assert truncation["max_length"] == 16 and truncation["records"] == 5
    assert truncation["truncated"] == sum(any(p + len(r) > 16 for r in e.responses)
                                          for p, e in zip(prompt, examples))


def test_describe_uses_nearest_rank_percentiles():
    assert describe(list(range(1, 101))) == {"min": 1, "mean": 50.5, "p50": 50, "p95": 95, "max": 100}
    assert describe([7]) == {"min": 7, "mean": 7, "p50": 7, "p95": 7, "max": 7}
    assert describe([]) is None


def test_csv_and_broken_json_array(tmp_path):
    csv_path = tmp_path / "sft.csv"
    # A blank line (skipped by the CSV reader) and a two-line cell: 'missing' is on line 6.
    csv_path.write_text('prompt,response\nhi,hello\n\n"two\nlines",ok\nmissing,\n')
    code, out = run_json(csv_path, tmp=tmp_path)
    assert code == 1 and out["format"] == "prompt_response" and out["records"] == 2
    assert [(i["line"], i["error"]) for i in out["invalid"]] == [(6, "missing field 'response'")]
    array = tmp_path / "broken.json"
    array.write_text('[\n {"prompt": "a", "response": "b"},\n {"prompt": \n]')
    code, out = run_json(array, "--skip-invalid", tmp=tmp_path)
    assert code == 2 and out["invalid"][0]["line"] == 4 and "invalid JSON" in out["error"]

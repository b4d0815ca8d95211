"""Check a data file before training on it.

    python -m rlhf_ds.data.check PATH [--kind sft|preference|ranking|unpaired|prompt] [--format NAME]
        [--tokenizer DIR] [--chat-template plain] [--max-length N] [--max-prompt-length N]
        [--split train] [--skip-invalid] [--json]

Prints the detected kind and format, the number of valid records, every invalid
record as `file:line: reason`, and, with a tokenizer, token-length statistics
(min/mean/p50/p95/max of the prompt and of the full sequence: prompt + response,
one per response for preference/ranking data, prompt + completion for unpaired KTO
data) and, with `--max-length` / `--max-prompt-length`, how many records would be
truncated.

`--json` prints exactly one JSON object: `source`, `kind`, `format`, `records`
(valid count), `invalid` (list of `{line, unit, where, error}`), `blank_lines`,
`tokens` (null without a tokenizer) and, when loading stopped, `error`.

Exit status: 0 when every record is valid (or `--skip-invalid`), 1 when some record
is invalid, 2 when the data could not be loaded at all (missing file, unknown
format, broken JSON array, unusable chat template).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from typing import Any, Dict, List, Optional

from rlhf_ds.data.formats import FORMATS
from rlhf_ds.data.load import load_records
from rlhf_ds.data.records import KINDS, DataFormatError, LoadResult, UnpairedRecord

EXIT_OK, EXIT_INVALID, EXIT_FATAL = 0, 1, 2


def describe(values: List[int]) -> Optional[Dict[str, float]]:
    """min/mean/p50/p95/max (nearest-rank percentiles: always an observed length)."""
    if not values:
        return None
    s = sorted(values)

    def pct(q: int) -> int:
        return s[max(0, math.ceil(len(s) * q / 100) - 1)]

    return {"min": s[0], "mean": round(statistics.fmean(s), 2), "p50": pct(50), "p95": pct(95), "max": s[-1]}


def token_report(result: LoadResult, tokenizer_dir: str, chat_template: Optional[str],
                 max_length: Optional[int], max_prompt_length: Optional[int]) -> Dict[str, Any]:
    from transformers import AutoTokenizer

    from rlhf_ds.data.chat import ChatFormatter
    from rlhf_ds.data.tokenization import tokenize_prompts, tokenize_ranking, tokenize_sft

    formatter = ChatFormatter(AutoTokenizer.from_pretrained(tokenizer_dir), chat_template)

    def run(limit, prompt_limit):
        if result.kind == "sft":
            ex, st = tokenize_sft(result.records, formatter, limit, prompt_limit)
            return [e.prompt_length for e in ex], [len(e.input_ids) for e in ex], st
        if result.kind in ("preference", "ranking", "unpaired"):
            records = [r.to_ranking() if isinstance(r, UnpairedRecord) else r for r in result.records]
            ex, st = tokenize_ranking(records, formatter, limit, prompt_limit)
            return ([len(e.prompt_ids) for e in ex],
                    [len(e.prompt_ids) + len(r) for e in ex for r in e.responses], st)
        ex, st = tokenize_prompts(result.records, formatter, prompt_limit)
        lengths = [len(e.input_ids) for e in ex]
        return lengths, lengths, st

    prompt, full, _ = run(None, None)
    report = {"tokenizer": tokenizer_dir,
              "template": formatter.template_source,
              "prompt": describe(prompt), "full": describe(full), "truncation": None}
    if max_length is not None or max_prompt_length is not None:
        st = run(max_length, max_prompt_length)[2]
        report["truncation"] = {"max_length": st.max_length, "max_prompt_length": st.max_prompt_length,
                                "records": st.records, "truncated": st.truncated,
                                "prompts_truncated": st.prompts_truncated,
                                "responses_truncated": st.responses_truncated}
    return report


def _print_text(out: Dict[str, Any]) -> None:
    print(f"source:  {out['source']}")
    print(f"kind:    {out['kind']}")
    print(f"format:  {out['format']}")
    print(f"records: {out['records']} valid, {len(out['invalid'])} invalid, {out['blank_lines']} blank lines")
    for bad in out["invalid"]:
        print(f"  invalid {bad['where']}: {bad['error']}")
    if out.get("error"):
        print(f"error:   {out['error']}")
    tokens = out.get("tokens")
    if tokens:
        print(f"tokens ({tokens['tokenizer']}, template {tokens['template']}):")
        for name in ("prompt", "full"):
            d = tokens[name]
            if d:
                print(f"  {name:<7} min {d['min']}  mean {d['mean']}  p50 {d['p50']}  p95 {d['p95']}  max {d['max']}")
        t = tokens.get("truncation")
        if t:
            print(f"  truncation: {t['truncated']}/{t['records']} records cut at max_length={t['max_length']}, "
                  f"max_prompt_length={t['max_prompt_length']} ({t['prompts_truncated']} prompts, "
                  f"{t['responses_truncated']} responses)")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_ds.data.check", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a .jsonl/.json/.txt/.csv/.parquet file, a dataset directory or a hub name")
    parser.add_argument("--kind", choices=KINDS, help="what the data is for (detected when omitted)")
    parser.add_argument("--format", help=f"force a format: {', '.join(FORMATS)}")
    parser.add_argument("--tokenizer", help="a tokenizer directory, for token-length statistics")
    parser.add_argument("--chat-template", help="'plain' for ours, else a Jinja template (default: the tokenizer's)")
    parser.add_argument("--max-length", type=int, help="report how many records this would truncate")
    parser.add_argument("--max-prompt-length", type=int)
    parser.add_argument("--split", default="train", help="split of a dataset directory or hub dataset")
    parser.add_argument("--skip-invalid", action="store_true", help="exit 0 even if some records are invalid")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    out: Dict[str, Any] = {"source": args.path, "kind": args.kind, "format": args.format, "records": 0,
                           "invalid": [], "blank_lines": 0, "tokens": None}
    code = EXIT_OK
    try:
        # Always skip, so that every invalid record is listed, not just the first.
        result = load_records(args.path, args.kind, args.format, skip_invalid=True, split=args.split)
        out.update(kind=result.kind, format=result.format, records=len(result.records),
                   invalid=[r.as_dict() for r in result.invalid], blank_lines=result.blank_lines)
        if result.invalid and not args.skip_invalid:
            code = EXIT_INVALID
        if args.tokenizer and result.records:
            out["tokens"] = token_report(result, args.tokenizer, args.chat_template,
                                         args.max_length, args.max_prompt_length)
    except DataFormatError as e:       # a record that stops loading (broken JSON array)
        out["invalid"].append({"line": e.location.number, "unit": e.location.unit,
                               "where": str(e.location), "error": e.reason})
        out["error"], code = str(e), EXIT_FATAL
    except (ValueError, OSError) as e:
        out["error"], code = str(e), EXIT_FATAL

    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        _print_text(out)
    return code


if __name__ == "__main__":
    sys.exit(main())

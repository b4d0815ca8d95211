"""launch/evaluate.py: the figures checked against plain transformers forwards on the run's own samples."""
import json
import math
import os

import pytest
import torch

from rlhf_ds.evaluation.summary import summarize
from rlhf_ds.evaluation.text_metrics import WinTieLoss, compare, distinct_n

from .checks import check_against_transformers


# ---------------------------------------------------------------------------- pure figures

def test_distinct_n_by_hand():
    texts = ["the cat is warm .", "The cat is kind ."]
    # words: the cat is warm . / the cat is kind .  -> 10 unigrams, distinct: the cat is warm . kind = 6
    assert distinct_n(texts, 1) == pytest.approx(6 / 10)
    # bigrams: (the cat)(cat is)(is warm)(warm .) (the cat)(cat is)(is kind)(kind .) -> 8, distinct 6
    assert distinct_n(texts, 2) == pytest.approx(6 / 8)
    assert distinct_n(["one"], 2) is None and distinct_n([], 1) is None


def test_ties_count_half():
    wtl = compare([1.0, 0.5, 0.2, 0.3, 0.30001], [0.5, 0.5, 0.9, 0.3, 0.3], [False, False, False, True, False],
                  tie_margin=1e-4)
    assert wtl == WinTieLoss(wins=1, ties=3, losses=1)
    assert wtl.win_rate == pytest.approx((1 + 1.5) / 5)
    # Identical responses are ties even when float noise makes their scores differ.
    assert compare([0.7000001], [0.7], [True]).ties == 1
    assert compare([], [], []).win_rate is None


def test_summary_by_hand():
    def row(prompt, model, score, kl, response, ids):
        return {"prompt": prompt, "model": model, "score": score, "gold": None, "kl": kl, "length": len(ids),
                "response": response, "response_ids": ids}
    rows = [row(0, "a", 1.0, 0.0, "x y", [1, 2]), row(1, "a", 2.0, 0.0, "x z", [1, 3]),
            row(0, "b", 1.5, 0.4, "x y", [1, 2]), row(1, "b", 1.0, 0.2, "q", [4])]
    a, b = summarize(rows, ["a", "b"], baseline="a", perplexity={"a": {"eval_ppl": 3.0, "eval_loss": math.log(3)}})
    assert (a["wins"], a["ties"], a["losses"], a["win_rate"]) == (0, 2, 0, 0.5)
    # b's first response is the same tokens as a's: a tie, though its score is higher.
    assert (b["wins"], b["ties"], b["losses"], b["win_rate"]) == (0, 1, 1, 0.25)
    assert b["rm_score"] == pytest.approx(1.25) and b["kl"] == pytest.approx(0.3)
    assert b["response_length"] == pytest.approx(1.5) and b["distinct_1"] == pytest.approx(3 / 3)
    assert a["sft_perplexity"] == 3.0 and b["sft_perplexity"] is None and a["gold_reward"] is None


# ---------------------------------------------------------------------------- one rank, in process

N_PROMPTS, NEW_TOKENS = 6, 8


@pytest.fixture(scope="module")
def one_rank(eval_run, tmp_path_factory):
    from rlhf_ds.evaluation.cli import main

    out = str(tmp_path_factory.mktemp("eval_out"))
    main([os.path.join(eval_run, "sft"), os.path.join(eval_run, "ppo"), "--out", out,
          "--num_prompts", str(N_PROMPTS), "--max_new_tokens", str(NEW_TOKENS), "--batch_size", "4"])
    results = json.load(open(os.path.join(out, "evaluation.json")))
    samples = [json.loads(line) for line in open(os.path.join(out, "samples.jsonl"))]
    return eval_run, out, results, samples


def test_finds_everything_in_the_run_folder(one_rank):
    run, out, results, samples = one_rank
    assert results["reward_model"] == os.path.join(run, "reward_model")
    assert results["reference"] == os.path.join(run, "sft")
    assert results["prompts"].endswith(os.path.join("task", "data", "eval_prompts.jsonl"))
    assert results["gold"] is True and results["baseline"] == "sft"
    assert results["sft_data"].endswith("sft.jsonl (the held-out share)")
    assert [m["model"] for m in results["models"]] == ["sft", "ppo"]
    assert len(samples) == 2 * N_PROMPTS
    for name in ("evaluation.json", "evaluation.md", "reward_vs_kl.png", "samples.jsonl"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    table = open(os.path.join(out, "evaluation.md")).read()
    assert table.startswith("| model | RM score | gold reward | win rate | KL to ref |")
    assert "| sft | " in table and "| ppo | " in table


def test_figures_match_plain_transformers(one_rank):
    """Scores, KL, gold reward and length of every sample recomputed from scratch; the summary is their mean."""
    run, _, results, samples = one_rank
    check_against_transformers(run, results, samples, N_PROMPTS, NEW_TOKENS)
    sft, ppo = results["models"]
    assert sft["kl"] == 0.0 and (sft["ties"], sft["win_rate"]) == (N_PROMPTS, 0.5)   # the reference itself
    assert ppo["kl"] != 0.0


def test_perplexity_matches_plain_transformers(one_rank):
    """The held-out SFT share (the split the SFT stage made), scored with a plain forward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_ds.config import load_config
    from rlhf_ds.data import SFTDataset, load_sft
    from rlhf_ds.trainers.data_prep import split_records

    run, _, results, _ = one_rank
    cfg = load_config(os.path.join(run, "config.json"))
    records = split_records(load_sft(os.path.join(run, "task", "data", "sft.jsonl")).records, cfg.data.eval_fraction,
                            cfg.seed)[1]
    tok = AutoTokenizer.from_pretrained(os.path.join(run, "sft"))
    ds = SFTDataset(records, tok, cfg.data.max_length, cfg.data.max_prompt_length)
    for m in results["models"]:
        model = AutoModelForCausalLM.from_pretrained(os.path.join(run, m["model"])).eval()
        nll, count = 0.0, 0
        for ex in ds:
            ids = torch.tensor([ex.input_ids])
            labels = torch.tensor(ex.labels[1:])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
            keep = labels != -100
            nll -= float(logp[torch.arange(len(labels))[keep], labels[keep]].sum())
            count += int(keep.sum())
        assert m["sft_perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_plan_without_a_run_folder_needs_flags(eval_run, tmp_path):
    """Model directories copied out of their run: the reward model and prompts must then be named."""
    import shutil

    from rlhf_ds.errors import PathNotFoundError
    from rlhf_ds.evaluation.plan import build_plan

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    shutil.copytree(os.path.join(eval_run, "sft"), a)
    shutil.copytree(os.path.join(eval_run, "ppo"), b)
    with pytest.raises(PathNotFoundError, match="give --reward_model DIR"):
        build_plan([a, b])
    with pytest.raises(PathNotFoundError, match="give --prompts FILE"):
        build_plan([a, b], reward_model=os.path.join(eval_run, "reward_model"))
    prompts = os.path.join(eval_run, "task", "data", "eval_prompts.jsonl")
    plan = build_plan([a, b], reward_model=os.path.join(eval_run, "reward_model"), prompts=prompts, baseline=b)
    assert plan.reference == a and plan.baseline == "b" and plan.sft_data is None and plan.gold is False
    assert plan.out_dir == os.path.join(str(tmp_path), "eval")


def test_command_line_mistakes_are_one_line(eval_run, tmp_path, capsys):
    from rlhf_ds.evaluation.cli import main

    for argv, expected in [([], "the following arguments are required: models"),
                           ([str(tmp_path)], f"{tmp_path} is not a model directory"),
                           ([os.path.join(eval_run, "sft"), "--num_prompts", "0"], "--num_prompts must be at least 1"),
                           ([os.path.join(eval_run, "sft"), "--baseline", "nope"], "--baseline nope: not one of")]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("evaluate.py: ") and expected in err[0], err

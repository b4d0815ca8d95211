"""Independent checks of an evaluation's samples: plain transformers forwards, no rlhf_ds model code."""
import os

import pytest
import torch


def _hf_logprob_sum(model, prompt_ids, response_ids):
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
    targets = ids[0, 1:]
    return float(logp[torch.arange(len(targets)), targets][-len(response_ids):].sum())


def check_against_transformers(run, results, samples, n_prompts, new_tokens):
    """Every sample's score, KL, gold reward and length recomputed with plain transformers forwards, and
    each model's figures as the means of its samples."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_ds.tasks import gold_reward

    tok = AutoTokenizer.from_pretrained(os.path.join(run, "sft"))
    lms = {m: AutoModelForCausalLM.from_pretrained(os.path.join(run, m)).eval() for m in ("sft", "ppo")}
    rm = AutoModelForSequenceClassification.from_pretrained(os.path.join(run, "reward_model")).eval()
    for s in samples:
        prompt_ids = tok(s["prompt_text"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            score = float(rm(torch.tensor([prompt_ids + s["response_ids"]])).logits[0, 0])
        assert s["score"] == pytest.approx(score, abs=1e-4)
        kl = _hf_logprob_sum(lms[s["model"]], prompt_ids, s["response_ids"]) - \
            _hf_logprob_sum(lms["sft"], prompt_ids, s["response_ids"])
        assert s["kl"] == pytest.approx(kl, abs=1e-3)
        assert s["length"] == len(s["response_ids"]) <= new_tokens
        assert s["response"] == tok.decode(s["response_ids"], skip_special_tokens=True)
        assert s["gold"] == pytest.approx(gold_reward(s["prompt_text"], s["response"]))
    for m in results["models"]:
        mine = [s for s in samples if s["model"] == m["model"]]
        assert m["rm_score"] == pytest.approx(sum(s["score"] for s in mine) / len(mine))
        assert m["kl"] == pytest.approx(sum(s["kl"] for s in mine) / len(mine))
        assert m["gold_reward"] == pytest.approx(sum(s["gold"] for s in mine) / len(mine))
        assert m["wins"] + m["ties"] + m["losses"] == n_prompts
    base = {s["prompt"]: s for s in samples if s["model"] == results["baseline"]}
    for m in results["models"]:
        mine = {s["prompt"]: s for s in samples if s["model"] == m["model"]}
        assert sorted(mine) == list(range(n_prompts))    # every prompt answered once, on whichever rank
        outcomes = ["tie" if s["response_ids"] == base[p]["response_ids"] or s["score"] == base[p]["score"]
                    else "win" if s["score"] > base[p]["score"] else "loss" for p, s in mine.items()]
        assert (m["wins"], m["ties"], m["losses"]) == tuple(outcomes.count(k) for k in ("win", "tie", "loss"))

"""A run folder as the pipeline leaves it, built in seconds without training: the demo task, `sft/`
(the demo's untrained base model), `ppo/` (the same model with its weights perturbed), `reward_model/`
(the base model with a fresh scalar head) and `config.json`."""
import os
import shutil

import pytest
import torch

from ..conftest import TINY, clean_env, read_jsonl  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _save(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.fixture(scope="session")
def eval_run(tmp_path_factory, demo_task):
    """The path of a run folder with sft/, ppo/, reward_model/, task/ and config.json."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_ds.config import load_config

    run = str(tmp_path_factory.mktemp("eval") / "run")
    shutil.copytree(demo_task, os.path.join(run, "task"))
    base = os.path.join(run, "task", "base_model")
    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    sft = AutoModelForCausalLM.from_pretrained(base)
    _save(sft, tok, os.path.join(run, "sft"))
    with torch.no_grad():
        for p in sft.parameters():
            p.add_(0.05 * torch.randn_like(p))
    _save(sft, tok, os.path.join(run, "ppo"))
    rm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    _save(rm, tok, os.path.join(run, "reward_model"))
    load_config(None, [*TINY, f"--save_dir={run}"]).save(os.path.join(run, "config.json"))
    return run

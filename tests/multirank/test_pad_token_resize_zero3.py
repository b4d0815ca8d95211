"""A tokenizer without a pad token under ZeRO-3: load_tokenizer adds one (one past the vocabulary),
and the partitioned actor and reward model must be resized for it (they were not: the first padded
forward indexed past the embedding)."""
import json
import os

import pytest

from .launcher import run_deepspeed

pytestmark = pytest.mark.multirank
SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "pad_token_resize.py")
WORDS = "the a cat dog river sun is warm cold and bright slow".split()


@pytest.fixture(scope="module")
def no_pad_model(tmp_path_factory):
    """A word-level tokenizer with bos, eos and unk but no pad, and a tiny Llama of its vocabulary."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from rlhf_ds.tasks.tiny_model import build_tiny_model

    specials = ["<unk>", "<s>", "</s>"]
    core = Tokenizer(WordLevel({w: i for i, w in enumerate(specials + WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    assert tok.pad_token is None
    path = str(tmp_path_factory.mktemp("nopad") / "model")
    build_tiny_model(tok, path, arch="llama")
    return path


def test_zero3_resizes_for_added_pad_token(no_pad_model, tmp_path):
    out = str(tmp_path / "resize.json")
    run_deepspeed(SCRIPT, [no_pad_model, out], ranks=2, timeout=300)
    results = [json.load(open(f"{out}.rank{r}")) for r in range(2)]
    vocab = len(WORDS) + 3
    for res in results:
        assert res["world"] == 2
        assert res["pad_id"] == vocab and res["len_tokenizer"] == vocab + 1      # the pad token was added
        for part in ("actor_embed", "actor_head", "reward_embed"):
            assert res[part] == {"rows": vocab + 1, "sharded": True, "new_row_finite": True}, part
        assert res["actor_pad_id"] == res["reward_pad_id"] == vocab
        assert res["finite"] and res["trained_finite"]
        assert res["padded_logprobs"] == pytest.approx(res["alone_logprobs"], abs=1e-5)
        assert res["padded_score"] == pytest.approx(res["alone_score"], abs=1e-5)
    assert results[0] == results[1]

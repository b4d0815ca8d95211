"""Checkpoints on one rank: atomic layout, crash while saving, pruning, loud failures."""
import json
import os

import pytest
import torch

from rlhf_ds.engine import CheckpointManager, build_train_engine, init_distributed


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x)


@pytest.fixture(scope="module")
def engine():
    init_distributed("cpu")
    torch.manual_seed(0)
    return build_train_engine("tiny", Tiny, {"zero_optimization": {"stage": 0}}, micro_batch_size=2, grad_accum=1,
                              precision="fp32", gradient_clipping=1.0, lr=0.1, weight_decay=0.0, total_steps=10,
                              warmup_steps=0, schedule="constant")


def _train_step(engine):
    loss = engine(torch.ones(2, 4)).sum()
    engine.backward(loss / 2)
    engine.step()


def test_save_load_round_trip_and_latest_is_plain_text(engine, tmp_path):
    ckpt = CheckpointManager(str(tmp_path), keep=2)
    _train_step(engine)
    before = engine.module.lin.weight.detach().clone()
    ckpt.save("step1", {"tiny": engine}, {"step": 1})
    assert open(tmp_path / "latest").read() == "step1\n"
    first_draw = torch.rand(3)                   # what the run would have drawn next
    _train_step(engine)
    assert not torch.equal(engine.module.lin.weight, before)
    state = ckpt.load({"tiny": engine})
    assert state["step"] == 1 and state["_tag"] == "step1"
    assert torch.equal(engine.module.lin.weight, before)
    assert torch.equal(torch.rand(3), first_draw)   # the random stream continues from the save point


def test_crash_while_saving_leaves_previous_checkpoint(engine, tmp_path):
    ckpt = CheckpointManager(str(tmp_path), keep=2)
    ckpt.save("step1", {"tiny": engine}, {"step": 1})
    # A save killed half-way leaves only a .partial folder; latest still names the complete one.
    os.makedirs(tmp_path / "step2.partial" / "tiny")
    (tmp_path / "step2.partial" / "tiny" / "garbage").write_text("torn")
    assert ckpt.latest_tag() == "step1"
    assert ckpt.load({"tiny": engine})["step"] == 1
    ckpt.save("step3", {"tiny": engine}, {"step": 3})
    assert not (tmp_path / "step2.partial").exists()     # cleaned up by the next save


def test_old_checkpoints_pruned(engine, tmp_path):
    ckpt = CheckpointManager(str(tmp_path), keep=2)
    for step in (1, 2, 3):
        ckpt.save(f"step{step}", {"tiny": engine}, {"step": step})
    assert sorted(d for d in os.listdir(tmp_path) if d.startswith("step")) == ["step2", "step3"]


def test_missing_checkpoint_named_by_latest_is_an_error(engine, tmp_path):
    ckpt = CheckpointManager(str(tmp_path))
    assert ckpt.load({"tiny": engine}) is None          # nothing to resume: a fresh start is right
    (tmp_path / "latest").write_text("step9\n")
    with pytest.raises(FileNotFoundError, match="names checkpoint 'step9'"):
        ckpt.load({"tiny": engine})


def test_resume_with_another_world_size_loads_and_says_so(engine, tmp_path):
    """A checkpoint of another world size is no longer refused (issue 11): below ZeRO its one optimizer
    file loads as it is (ZeRO checkpoints go through the universal format, tested on real ranks in
    tests/multirank/test_resume_world_size.py); the state says which world size wrote it."""
    ckpt = CheckpointManager(str(tmp_path))
    _train_step(engine)
    before = engine.module.lin.weight.detach().clone()
    path = ckpt.save("step1", {"tiny": engine}, {"step": 1})
    first_draw = torch.rand(3)
    state_file = os.path.join(path, "trainer_state.json")
    with open(state_file) as f:
        state = json.load(f)
    assert state["world_size"] == 1          # recorded by the manager itself
    with open(state_file, "w") as f:         # as if 4 ranks had written it
        json.dump({**state, "world_size": 4}, f)
    _train_step(engine)
    loaded = ckpt.load({"tiny": engine})
    assert loaded["_resharded_from"] == 4 and loaded["_rng"] == "saved"
    assert torch.equal(engine.module.lin.weight, before)
    assert torch.equal(torch.rand(3), first_draw)   # rank 0 continues its own stream

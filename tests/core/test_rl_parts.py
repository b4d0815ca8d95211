"""Pieces of the RL loop that need no model: the batch plan and its errors, dynamic sampling's choice of
groups, the loss mask of truncated completions, the memory estimate of each algorithm, the recipes."""
import pytest
import torch

from rlhf_ds.config import ConfigError, load_config
from rlhf_ds.config_schema import RL_RECIPES, recipe_layer
from rlhf_ds.memory import estimate_run
from rlhf_ds.rewards import SourceScores
from rlhf_ds.trainers.rl_experience import loss_mask
from rlhf_ds.trainers.rl_loop import algorithm_name, check_algorithm, plan_rl
from rlhf_ds.trainers.rl_sampling import Draw, Rollout, cat_rollouts, sample_groups, zero_spread_groups


def _ppo(*overrides):
    return load_config(None, list(overrides)).ppo


def test_plan_in_prompts_and_completions():
    plan = plan_rl(_ppo("--ppo.rollout_batch_size=8", "--ppo.n_samples=4", "--ppo.minibatch_size=16",
                        "--ppo.ppo_epochs=2"), world=2)
    assert (plan.prompts_per_rank, plan.completions_per_rank) == (4, 16)
    assert (plan.minibatch.per_rank, plan.steps_per_iteration) == (8, 4)      # 32 completions / 16, x 2 epochs


@pytest.mark.parametrize("overrides, world, message", [
    (["--ppo.rollout_batch_size=9", "--ppo.minibatch_size=9"], 2,
     r"ppo.rollout_batch_size \(9 prompts\) must be divisible by the 2 ranks.*change ppo.rollout_batch_size"),
    (["--ppo.rollout_batch_size=8", "--ppo.n_samples=4", "--ppo.minibatch_size=32", "--ppo.micro_batch_size=5"], 2,
     r"ppo.minibatch_size \(completions\): 16 rows per rank .* micro-batches of 5"),
])
def test_plan_errors_say_which_number_to_change(overrides, world, message):
    with pytest.raises(ConfigError, match=message):
        plan_rl(_ppo(*overrides), world)


def test_minibatch_must_divide_the_completions():
    with pytest.raises(ConfigError, match=r"ppo.minibatch_size \(24 completions\) must divide the 32 completions of a "
                                          r"rollout \(ppo.rollout_batch_size 8 prompts x ppo.n_samples 4\)"):
        load_config(None, ["--ppo.rollout_batch_size=8", "--ppo.n_samples=4", "--ppo.minibatch_size=24"])


def test_algorithm_checks_and_names():
    with pytest.raises(ConfigError, match="ppo.advantage_estimator=grpo compares the samples of a prompt: set "
                                          "ppo.n_samples >= 2"):
        check_algorithm(_ppo("--ppo.advantage_estimator=grpo"), __import__("rlhf_ds").rl.advantage_estimator("grpo"))
    with pytest.raises(ConfigError, match="dynamic_sampling"):
        check_algorithm(_ppo("--ppo.dynamic_sampling=true"), __import__("rlhf_ds").rl.advantage_estimator("gae"))
    assert algorithm_name(_ppo()) == "ppo"
    assert algorithm_name(_ppo("--ppo.advantage_estimator=rloo")) == "rloo"
    assert algorithm_name(_ppo("--ppo.advantage_estimator=grpo", "--ppo.importance_ratio=sequence")) == "gspo"
    assert algorithm_name(_ppo("--ppo.algorithm=dapo", "--ppo.advantage_estimator=grpo")) == "dapo"


# ---------------------------------------------------------------------------- dynamic sampling

def _draw(scores, rows, response_length=3, prompt_length=2):
    """A drawn batch whose rows carry their own index in the response, so a test can see which were kept."""
    b = len(scores)
    seqs = torch.cat([torch.full((b, prompt_length), 7), torch.tensor(rows).unsqueeze(1).expand(b, response_length)], 1)
    rollout = Rollout(sequences=seqs, attention_mask=torch.ones_like(seqs), ended=torch.ones(b, dtype=torch.bool),
                      action_mask=torch.ones(b, response_length, dtype=torch.long))
    s = torch.tensor(scores, dtype=torch.float32)
    return Draw(rollout=rollout, scores=s, raw=s, parts={"model": SourceScores.everywhere(s)}, rows=list(rows))


def _stream(draws):
    it = iter(draws)
    return lambda: next(it)


def test_zero_spread_groups():
    assert zero_spread_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0]), 2).tolist() == [True, False, True]


def test_without_dynamic_sampling_one_batch_is_used_whole():
    out = sample_groups(_stream([_draw([1, 1, 0, 1], [0, 0, 1, 1])]), n=2, groups=2, dynamic=False, max_extra=3,
                        pad_id=0)
    assert out.draw.rows == [0, 0, 1, 1] and out.extra_batches == 0 and out.dropped == 0
    assert out.zero_spread == 1 and out.groups_seen == 2


def test_dynamic_sampling_drops_constant_groups_and_draws_more():
    # batch 1: prompt 0 constant, prompt 1 informative; batch 2: prompt 2 informative, prompt 3 constant
    draws = [_draw([1, 1, 0, 1], [0, 0, 1, 1]), _draw([0, 2, 5, 5], [2, 2, 3, 3])]
    out = sample_groups(_stream(draws), n=2, groups=2, dynamic=True, max_extra=3, pad_id=0)
    assert out.draw.rows == [1, 1, 2, 2]
    assert out.draw.scores.tolist() == [0, 1, 0, 2]
    assert out.draw.rollout.sequences[:, -1].tolist() == [1, 1, 2, 2]      # the rollout rows follow
    assert (out.extra_batches, out.dropped, out.groups_seen, out.zero_spread) == (1, 2, 4, 2)


def test_dynamic_sampling_stops_at_the_cap_and_fills_with_dropped_groups():
    draws = [_draw([1, 1, 0, 1], [0, 0, 1, 1]), _draw([3, 3, 4, 4], [2, 2, 3, 3]), _draw([0, 9, 0, 9], [4, 4, 5, 5])]
    out = sample_groups(_stream(draws), n=2, groups=2, dynamic=True, max_extra=1, pad_id=0)
    assert out.extra_batches == 1
    assert out.draw.rows == [0, 0, 1, 1]          # prompt 1, completed with the first dropped group (prompt 0)
    assert out.dropped == 2                       # prompts 2 and 3 were drawn and left out


def test_cat_rollouts_pads_prompts_left_and_responses_right():
    a = Rollout(sequences=torch.tensor([[5, 6, 7]]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                action_mask=torch.ones(1, 1, dtype=torch.long), ended=torch.tensor([True]))
    b = Rollout(sequences=torch.tensor([[8, 9, 4]]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                action_mask=torch.ones(1, 2, dtype=torch.long), ended=torch.tensor([False]))
    out = cat_rollouts([a, b], pad_id=0)
    assert out.sequences.tolist() == [[5, 6, 7, 0], [0, 8, 9, 4]]
    assert out.attention_mask.tolist() == [[1, 1, 1, 0], [0, 1, 1, 1]]
    assert out.action_mask.tolist() == [[1, 0], [1, 1]]


def test_truncated_completions_leave_the_loss_when_asked():
    r = Rollout(sequences=torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 4, dtype=torch.long),
                action_mask=torch.tensor([[1, 1], [1, 1]]), ended=torch.tensor([True, False]))
    assert loss_mask(r, False).tolist() == [[1, 1], [1, 1]]
    assert loss_mask(r, True).tolist() == [[1, 1], [0, 0]]


# ---------------------------------------------------------------------------- what each algorithm holds

def _models(*overrides):
    cfg = load_config(None, list(overrides))
    (_, est, _), = estimate_run(cfg, {"zero_optimization": {"stage": 3}}, ("ppo",), 2, "cpu")[0]
    return {i.model for i in est.items}, est


def test_memory_estimate_counts_only_the_models_an_algorithm_builds():
    ppo, _ = _models()
    assert ppo == {"actor", "critic", "reference", "reward"}
    grpo, est = _models("--ppo.advantage_estimator=grpo", "--ppo.n_samples=4", "--ppo.kl_mode=loss")
    assert grpo == {"actor", "reference", "reward"}
    assert any("critic: none" in n for n in est.notes)
    dr, _ = _models("--ppo.advantage_estimator=dr_grpo", "--ppo.n_samples=4", "--ppo.kl_mode=off")
    assert dr == {"actor", "reward"}


def test_recipes_resolve_to_valid_configs():
    for name in RL_RECIPES:
        layer = recipe_layer(name, demo=True)
        cfg = load_config(layer, [])
        est = __import__("rlhf_ds").rl.advantage_estimator(cfg.ppo.advantage_estimator)
        check_algorithm(cfg.ppo, est)
        plan_rl(cfg.ppo, 2)
    with pytest.raises(ConfigError, match="unknown RL recipe 'ppo2'; allowed: ppo, grpo"):
        recipe_layer("ppo2", demo=False)

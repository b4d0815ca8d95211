"""`task`: the embedded task's preset and RL values as a config layer, under the user's file and command
line; a task with a model of the user's is refused; the describe demo is configured as before."""
import json

import pytest

from rlhf_ds.config import ConfigError, build_config, load_config
from rlhf_ds.config_schema import RL_RECIPES, RLHFConfig, recipe_layer
from rlhf_ds.pipeline import pipeline_config
from rlhf_ds.tasks.arithmetic import EVAL_SAMPLES, PRESET, RL_PRESETS
from rlhf_ds.tasks.registry import embedded_task, sample_evaluation, task_names
from rlhf_ds.trainers.rl_rewards import uses_reward_model


def test_the_config_allows_exactly_the_registered_tasks():
    field = RLHFConfig.__dataclass_fields__["task"]
    assert tuple(task_names()) == field.metadata["choices"]
    assert field.default == "describe"


def test_grpo_on_the_arithmetic_task():
    cfg = pipeline_config(None, ["--task", "arithmetic"], recipe="grpo")
    assert cfg.task == "arithmetic" and cfg.save_dir == "outputs/arithmetic"
    # The rule rewards, no reward model anywhere (PPO's critic would start from the SFT policy).
    assert [s.label() for s in cfg.rewards.sources] == ["exact_match", "format_reward"]
    assert not uses_reward_model(cfg) and cfg.model.critic_init == "sft"
    assert (cfg.data.max_length, cfg.generation.max_new_tokens) == (PRESET["data"]["max_length"],
                                                                    PRESET["generation"]["max_new_tokens"])
    assert cfg.data.demo_eval_prompts == 77 and cfg.sft.learning_rate == PRESET["sft"]["learning_rate"]
    # The recipe's keys, with the task's RL values over them.
    assert cfg.ppo.advantage_estimator == "grpo" and cfg.ppo.n_samples == RL_RECIPES["grpo"]["n_samples"]
    assert cfg.ppo.kl_mode == RL_RECIPES["grpo"]["kl_mode"]
    for key, value in RL_PRESETS["*"].items():
        assert getattr(cfg.ppo, key) == value, key


def test_ppo_on_the_arithmetic_task_has_its_own_batch_sizes():
    cfg = pipeline_config(None, ["--task=arithmetic"])
    assert cfg.ppo.advantage_estimator == "gae" and cfg.ppo.n_samples == 1
    for key, value in {**RL_PRESETS["*"], **RL_PRESETS["ppo"]}.items():
        assert getattr(cfg.ppo, key) == value, key
    assert not uses_reward_model(cfg) and cfg.model.critic_init == "sft"


def test_file_and_command_line_win_over_the_task(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: arithmetic\nppo:\n  kl_coef: 0.3\n  iterations: 7\ngeneration:\n  max_new_tokens: 10\n")
    cfg = pipeline_config(str(path), ["--ppo.iterations=3", "--save_dir", str(tmp_path / "out")], recipe="grpo")
    assert (cfg.ppo.kl_coef, cfg.ppo.iterations, cfg.generation.max_new_tokens) == (0.3, 3, 10)
    assert cfg.save_dir == str(tmp_path / "out")
    as_dict = pipeline_config({"task": "arithmetic", "ppo": {"kl_coef": 0.2}}, [], recipe="grpo")
    assert as_dict.ppo.kl_coef == 0.2 and as_dict.ppo.iterations == RL_PRESETS["*"]["iterations"]


def test_the_written_config_loads_back_unchanged(tmp_path):
    cfg = pipeline_config(None, ["--task", "arithmetic"], recipe="grpo")
    cfg.save(str(tmp_path / "config.json"))
    again = load_config(str(tmp_path / "config.json"))
    assert again.to_dict() == cfg.to_dict()
    assert pipeline_config(again, []).to_dict() == cfg.to_dict()


def test_a_task_with_a_model_of_ones_own_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="task: arithmetic is an embedded task .* model.name_or_path"):
        pipeline_config(None, ["--task=arithmetic", f"--model.name_or_path={tmp_path}"], recipe="grpo")
    with pytest.raises(ConfigError, match="task: 'sums' is not allowed; allowed: describe, arithmetic"):
        pipeline_config(None, ["--task=sums"], recipe="grpo")


def test_the_describe_demo_is_configured_as_before():
    assert pipeline_config(None, [], recipe="grpo").to_dict() == \
        build_config(base=recipe_layer("grpo", True)).to_dict()
    assert pipeline_config(None, []).to_dict() == load_config(None, []).to_dict()
    assert sample_evaluation(load_config(None, [])) is None


def test_recipe_values_are_checked_once_with_the_recipe_applied():
    # 8 prompts x the recipe's 8 samples = 64 completions: a valid minibatch, although 8 prompts x PPO's
    # one sample (the defaults before the recipe) would not hold it. The configuration used to be
    # checked once without the recipe, which refused this command line.
    cfg = pipeline_config(None, ["--ppo.rollout_batch_size=8", "--ppo.minibatch_size=64"], recipe="grpo")
    assert cfg.ppo.n_samples * cfg.ppo.rollout_batch_size == 64


def test_the_task_layer_takes_shared_then_recipe_values():
    task = embedded_task("arithmetic")
    assert task.layer("grpo")["ppo"] == RL_PRESETS["*"]
    assert task.layer("ppo")["ppo"] == {**RL_PRESETS["*"], **RL_PRESETS["ppo"]}
    assert json.dumps(task.layer("grpo"))                          # plain values: it is written as config.json
    evaluation = sample_evaluation(pipeline_config(None, ["--task=arithmetic"]))
    assert evaluation.samples == EVAL_SAMPLES and set(evaluation.summary) <= set(evaluation.figures)
    got = evaluation.score([["answer: 5", "5"], ["answer: 1", "answer: 2"]], {"answer": ["5", "2"]})
    assert got == {"accuracy": 0.5, "pass_at_n": 1.0, "format_rate": 0.75}

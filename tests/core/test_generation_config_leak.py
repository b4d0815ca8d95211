"""Samples come from the policy being scored: the model's own generation_config (saved with it, and
carried by save_pretrained from a base model through the SFT export into PPO) must add no logits
processor to the rollout sampler.

The sampler's log-prob of each sampled token is read from generate's output scores (the logits after
every processor, temperature included) and compared with PolicyModel's log-prob of the same token.
"""
import pytest
import torch

from rlhf_ds.engine import GenerationSettings, hf_generate
from rlhf_ds.models.policy import PolicyModel, unwrap

# transformers' model classes are imported inside the functions (see test_generation_copy.py: the
# kernel tests need to import triton first).

PAD, BOS, EOS, VOCAB = 0, 1, 2, 40
TEMPERATURE = 0.7


def hostile_generation_config():
    """Every processor a checkpoint's generation_config.json can switch on by itself."""
    from transformers import GenerationConfig

    return GenerationConfig(
        repetition_penalty=1.3, min_p=0.2, no_repeat_ngram_size=2, bad_words_ids=[[5]], suppress_tokens=[6],
        sequence_bias=[[[7], 3.0]], exponential_decay_length_penalty=(1, 1.5), typical_p=0.8, epsilon_cutoff=0.01,
        min_length=30, forced_eos_token_id=EOS, renormalize_logits=True, do_sample=True, temperature=0.3, top_k=5,
        top_p=0.8, max_length=12, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    # A wide init: peaked next-token distributions, so every processor above changes them visibly.
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=VOCAB, initializer_range=0.3, bos_token_id=BOS,
                         eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.generation_config = hostile_generation_config()
    path = str(tmp_path_factory.mktemp("hostile") / "model")
    model.save_pretrained(path)
    return path


def load(model_dir, lora=False):
    from rlhf_ds.models.loading import load_causal_lm

    model = load_causal_lm(model_dir).eval()
    assert model.generation_config.repetition_penalty == 1.3     # it came with the checkpoint
    if lora:
        from peft import LoraConfig, get_peft_model
        torch.manual_seed(1)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False)).eval()
    return model


def prompts():
    """Three left-padded prompts of different lengths, `(3, 6)`."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(8, VOCAB, (3, 6), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate((6, 4, 2)):
        ids[row, :6 - length] = PAD
        mask[row, :6 - length] = 0
    return ids, mask


def sample(model, settings, seed=0, with_entropy=False):
    """(prompt ids, prompt mask, response, response mask up to and including EOS, sampler log-probs
    `(B, R)`[, sampler entropy `(B, R)`])."""
    ids, mask = prompts()
    torch.manual_seed(seed)
    seqs, scores = hf_generate(model, ids, mask, settings, EOS, PAD, return_scores=True)
    response = seqs[:, ids.shape[1]:]
    is_eos = (response == EOS).long()
    action = (is_eos.cumsum(1) - is_eos == 0).long()       # 1 up to and including the first EOS
    logp = torch.log_softmax(scores.float(), -1)
    sampler = logp.gather(-1, response.unsqueeze(-1)).squeeze(-1)
    if with_entropy:
        return ids, mask, response, action, sampler, -(logp.exp() * logp).nan_to_num(nan=0.0).sum(-1)
    return ids, mask, response, action, sampler


def score(policy, ids, mask, response, action, **kwargs):
    seqs, attn = torch.cat([ids, response], 1), torch.cat([mask, action], 1)
    with torch.no_grad():
        return policy(seqs, attn, num_scored=response.shape[1], **kwargs)


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
def test_sampled_logprobs_are_the_scored_ones(model_dir, lora):
    model = load(model_dir, lora)
    own_config = unwrap(model).generation_config.to_dict()
    settings = GenerationSettings(max_new_tokens=10, temperature=TEMPERATURE, top_p=1.0, top_k=0)
    ids, mask, response, action, sampler = sample(model, settings)
    assert action.sum() > 12                                 # several tokens scored per row
    scored = score(PolicyModel(model), ids, mask, response, action, temperature=TEMPERATURE)["logprobs"]
    on = action.bool()
    torch.testing.assert_close(sampler[on], scored[on], atol=2e-5, rtol=0)
    # Generation left the model's own config as it was (an export still carries it unchanged).
    assert unwrap(model).generation_config.to_dict() == own_config


def test_greedy_takes_the_scored_argmax(model_dir):
    model = load(model_dir)
    ids, mask, response, action, _ = sample(model, GenerationSettings(max_new_tokens=10, do_sample=False))
    logits = score(PolicyModel(model), ids, mask, response, action, return_logits=True)["logits"]
    on = action.bool()
    assert torch.equal(response[on], logits.argmax(-1)[on])


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused_head"])
def test_min_new_tokens_is_scored_as_sampled(model_dir, fused):
    """The sampler takes EOS out of the first min_new_tokens steps; PolicyModel does the same when told."""
    model = load(model_dir)
    m = 4
    settings = GenerationSettings(max_new_tokens=8, min_new_tokens=m, temperature=TEMPERATURE)
    ids, mask, response, action, sampler, entropy = sample(model, settings, seed=1, with_entropy=True)
    policy = PolicyModel(model, fused_head=fused)
    out = score(policy, ids, mask, response, action, temperature=TEMPERATURE, min_new_tokens=m, eos_token_id=EOS,
                with_entropy=True)
    on = action.bool()
    torch.testing.assert_close(sampler[on], out["logprobs"][on], atol=2e-5, rtol=0)
    torch.testing.assert_close(entropy[on], out["entropy"][on], atol=2e-5, rtol=0)   # the sampler's too
    # Without the arguments the first m positions are scored with EOS still in the softmax.
    plain = score(policy, ids, mask, response, action, temperature=TEMPERATURE)["logprobs"]
    assert (sampler[:, :m] - plain[:, :m]).abs().max() > 1e-2
    torch.testing.assert_close(sampler[:, m:][on[:, m:]], plain[:, m:][on[:, m:]], atol=2e-5, rtol=0)


def test_eos_target_inside_min_new_tokens_stays_finite(model_dir):
    """A scored EOS where the sampler could not have drawn one keeps its plain log-prob: a masked-out
    position must not turn into -inf (NaN once multiplied by a zero mask)."""
    policy = PolicyModel(load(model_dir))
    seqs = torch.tensor([[BOS, 9, 10, EOS, 11, 12]])
    attn = torch.ones_like(seqs)
    with torch.no_grad():
        plain = policy(seqs, attn, num_scored=4)["logprobs"]
        suppressed = policy(seqs, attn, num_scored=4, min_new_tokens=3, eos_token_id=EOS)["logprobs"]
    assert torch.isfinite(suppressed).all()
    assert suppressed[0, 1] == plain[0, 1]                    # the EOS target
    assert (suppressed[0, [0, 2]] > plain[0, [0, 2]]).all()   # renormalised without EOS
    assert suppressed[0, 3] == plain[0, 3]                    # past min_new_tokens


def test_rl_loop_scores_rollouts_as_sampled_with_min_new_tokens(model_dir):
    """The RL loop's step 4 (score_rollout, the old and reference log-probs) passes min_new_tokens and
    EOS on to the scorer, so a rollout sampled with EOS blocked is scored under the same distribution."""
    from rlhf_ds.trainers.rl_experience import score_rollout
    from rlhf_ds.trainers.rl_sampling import Rollout

    model = load(model_dir)
    m = 4
    settings = GenerationSettings(max_new_tokens=8, min_new_tokens=m, temperature=TEMPERATURE)
    ids, mask, response, action, sampler = sample(model, settings, seed=2)
    policy = PolicyModel(model)
    rollout = Rollout(sequences=torch.cat([ids, response], 1), attention_mask=torch.cat([mask, action], 1),
                      action_mask=action, ended=(response == EOS).any(1))
    scored = score_rollout(rollout, policy, policy, None, micro=2, temperature=TEMPERATURE,
                           min_new_tokens=m, eos_token_id=EOS)
    on = action.bool()
    torch.testing.assert_close(scored.old_logprobs[on], sampler[on], atol=2e-5, rtol=0)
    torch.testing.assert_close(scored.ref_logprobs[on], sampler[on], atol=2e-5, rtol=0)

"""The memory model behind `python -m rlhf_ds.memory`: pure functions of an architecture and a run
plan, no device, no files (rlhf_ds/memory.py reads configs, prints and checks).

The model (all per rank, bytes; p = parameters, T = trainable parameters, N = ranks):
  weights      full precision: p x 2 (bf16/fp16) or 4 (fp32). 4-bit (QLoRA): every linear layer of the
               transformer blocks at 0.5 byte plus its block scales (one fp32 per 64 weights, or with
               double quantisation one byte per 64 plus one fp32 per 64 x 256), i.e. 0.5625 or ~0.5157
               byte/param; embeddings, norms and heads stay in the training dtype. / N at ZeRO-3.
  adapters     r x (in + out) per adapted linear, in the training dtype. / N at ZeRO-3.
  gradients    T x (2 or 4). / N from ZeRO-2.
  optimizer    AdamW: m and v in fp32, plus an fp32 master copy under bf16/fp16: T x 12 (T x 8 in fp32).
               / N from ZeRO-1; 0 on the device with optimizer offload. (The ZeRO paper's 16 bytes
               per trained parameter with mixed precision: 2 + 2 + 12.)
  activations  what backward keeps, per token and transformer block (elements): residual and norm
               outputs 4h, q/k/v before and after rotary 2(h + 2 kv d), attention output h, MLP 4i
               (gate, up, act(gate), product): 7h + 4 kv d + 4i, x 2 or 4 bytes; SDPA/flash attention
               assumed (no s x s score matrix). With gradient checkpointing: h per token and block,
               plus one block's full set during its recompute. Plus the LM head's logits
               (dtype), their fp32 log-softmax and its gradient: tokens x V x (2 or 4 + 8), over the
               scored tokens only (PPO scores the response: R + 1 positions).
  KV cache     2 x layers x kv heads x head dim x (prompt + new tokens) x generation batch x (2 or 4).
               The generation batch is the rollout per rank in completions
               (ppo.rollout_batch_size x ppo.n_samples / N).
  generation   ZeRO-3 with the hybrid engine: one gathered, hook-free copy of the actor in the
  copy         training dtype, LoRA fused (rlhf_ds/engine/hybrid.py). None below ZeRO-3.
  overhead     CUDA context and allocator slack: 1 GiB on a GPU (0 on CPU).

Which models a stage holds: SFT the policy; RM the scalar model; the RL stage the actor (trained),
a critic (trained; only for an advantage estimator that needs one: gae), a reference (only with a
KL term; none when it is the actor with adapters disabled) and a reward model (only when a reward
source is one; none when it shares the critic's backbone).
Peak = everything held + the largest phase: generation (KV cache +
generation copy) or training (activations of the actor or the critic, whichever is larger).
This is an estimate, not a bound: allocator fragmentation, DeepSpeed's communication buckets and
framework workspaces come on top (the 1 GiB overhead is meant to cover them on small runs).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Tuple, Optional

from .lora_settings import LoRASettings

GiB = 2 ** 30
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
BLOCKSIZE = 64            # bitsandbytes 4-bit block size (transformers' default)
NESTED_BLOCKSIZE = 256    # double quantisation of the block scales


class MemoryEstimateError(ValueError):
    """The architecture or config cannot be estimated (unknown model type, missing config)."""


# ---------------------------------------------------------------------------- architecture

@dataclass(frozen=True)
class Architecture:
    """The numbers of a LLaMA-family decoder (llama, mistral, qwen2, qwen3)."""
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    model_type: str = "llama"
    name: str = ""

    @classmethod
    def from_hf_config(cls, c: Dict, name: str = "") -> "Architecture":
        model_type = c.get("model_type", "llama")
        if model_type not in SUPPORTED:
            raise MemoryEstimateError(f"memory estimate: model_type {model_type!r} is not supported; supported: "
                                      f"{', '.join(SUPPORTED)} (LLaMA-family decoders)")
        heads = int(c["num_attention_heads"])
        hidden = int(c["hidden_size"])
        attention_bias = bool(c.get("attention_bias", False))
        return cls(hidden_size=hidden, num_layers=int(c["num_hidden_layers"]), num_heads=heads,
                   num_kv_heads=int(c.get("num_key_value_heads") or heads),
                   head_dim=int(c.get("head_dim") or hidden // heads),
                   intermediate_size=int(c["intermediate_size"]), vocab_size=int(c["vocab_size"]),
                   tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
                   qkv_bias=model_type == "qwen2" or attention_bias, o_bias=attention_bias,
                   mlp_bias=bool(c.get("mlp_bias", False)), qk_norm=model_type == "qwen3",
                   model_type=model_type, name=name or c.get("_name_or_path", ""))

    def linears(self) -> Dict[str, Tuple[int, int]]:
        """(in, out) of each linear layer of one block, by the module names transformers uses."""
        h, q, kv, i = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, \
            self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def _biases(self) -> int:
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        n = (q + 2 * kv) if self.qkv_bias else 0
        n += self.hidden_size if self.o_bias else 0
        n += (2 * self.intermediate_size + self.hidden_size) if self.mlp_bias else 0
        return n

    @property
    def block_linear_weights(self) -> int:
        return sum(a * b for a, b in self.linears().values())

    @property
    def block_other(self) -> int:
        """Biases and norms of one block (never quantised)."""
        return self._biases() + 2 * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0)

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def quantizable_params(self) -> int:
        """Weights bitsandbytes quantises: the linear layers of the blocks (not the heads)."""
        return self.num_layers * self.block_linear_weights

    def params(self, head: str = "lm") -> int:
        """All parameters of the causal LM (head="lm") or the sequence-classification model with one
        label (head="scalar": the LM head is replaced by a hidden -> 1 `score`)."""
        body = self.embedding_params + self.num_layers * (self.block_linear_weights + self.block_other) + \
            self.hidden_size
        return body + (self.lm_head_params if head == "lm" else self.hidden_size)

    def lora_params(self, r: int, targets) -> int:
        """Adapter parameters for rank r on `targets` (all-linear or a list of module names)."""
        lin = self.linears()
        names = list(lin) if targets == "all-linear" else [t for t in targets if t in lin]
        unknown = [] if targets == "all-linear" else [t for t in targets if t not in lin]
        if unknown:
            raise MemoryEstimateError(f"lora.target_modules {unknown} are not linear layers of a {self.model_type} "
                                      f"block ({', '.join(lin)})")
        return self.num_layers * sum(r * (lin[n][0] + lin[n][1]) for n in names)


def bytes_per_4bit_param(double_quant: bool) -> float:
    """Packed weight (0.5 byte) + block scales: fp32 per 64, or with double quantisation one byte per 64
    plus one fp32 per 64 x 256 (Dettmers et al. 2023, section 3)."""
    scales = (1.0 / BLOCKSIZE + 4.0 / (BLOCKSIZE * NESTED_BLOCKSIZE)) if double_quant else 4.0 / BLOCKSIZE
    return 0.5 + scales


# ---------------------------------------------------------------------------- the estimate

@dataclass
class Item:
    model: str
    component: str
    nbytes: float
    note: str = ""


@dataclass
class Estimate:
    stage: str
    items: List[Item] = field(default_factory=list)      # held for the whole stage
    phases: Dict[str, List[Item]] = field(default_factory=dict)
    overhead: float = 0.0
    notes: List[str] = field(default_factory=list)

    @property
    def static(self) -> float:
        return sum(i.nbytes for i in self.items)

    def phase_total(self, name: str) -> float:
        return sum(i.nbytes for i in self.phases.get(name, []))

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_total) if self.phases else ""

    @property
    def peak(self) -> float:
        return self.static + (self.phase_total(self.peak_phase) if self.phases else 0.0) + self.overhead

    def by_component(self) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for i in self.items + self.phases.get(self.peak_phase, []):
            out[i.component] = out.get(i.component, 0.0) + i.nbytes
        out["overhead"] = self.overhead
        return out


@dataclass
class Plan:
    """What the estimate needs from a run config (see `plan_from_config`)."""
    world_size: int = 1
    zero_stage: int = 3
    offload_optimizer: bool = False
    precision: str = "bf16"
    micro_batch: int = 1
    max_length: int = 512
    prompt_length: int = 256
    new_tokens: int = 128
    rollout_per_rank: int = 1
    gradient_checkpointing: bool = False
    hybrid: bool = True
    lora: LoRASettings = field(default_factory=LoRASettings)   # r=0: full fine-tuning
    reward_micro_batch: int = 1
    ranking_k: int = 2
    critic: bool = True          # the RL stage trains a critic (ppo.advantage_estimator=gae)
    reference: bool = True       # the RL stage holds a reference (ppo.kl_mode reward or loss)
    reward_model: bool = True    # the RL stage holds a reward model (a reward source is one)

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2

    @property
    def mixed(self) -> bool:
        return self.precision != "fp32"


def _model_items(arch: Architecture, plan: Plan, role: str, label: str, head: str, trained: bool) -> List[Item]:
    """Weights, adapters, gradients and optimizer states of one model, per rank."""
    n, b = plan.world_size, plan.dtype_bytes
    shard_w = n if plan.zero_stage == 3 else 1
    items = []
    total = arch.params(head)
    if plan.lora.quantizes(role):
        q = arch.quantizable_params
        per_param = bytes_per_4bit_param(plan.lora.double_quant)
        w = q * per_param + (total - q) * b
        items.append(Item(label, "weights", w / shard_w,
                          f"{plan.lora.quantization} 4-bit base ({q / 1e6:.0f}M params at {per_param:.4f} B) + "
                          f"{(total - q) / 1e6:.0f}M in {plan.precision}"))
    else:
        items.append(Item(label, "weights", total * b / shard_w, f"{total / 1e6:.0f}M params in {plan.precision}"))
    adapters = arch.lora_params(plan.lora.r, plan.lora.target_modules) if plan.lora.applies_to(role) else 0
    if adapters:
        items.append(Item(label, "adapters", adapters * b / shard_w, f"r={plan.lora.r}: {adapters / 1e6:.1f}M params"))
    if not trained:
        return items
    if plan.lora.applies_to(role):
        trainable = adapters + (arch.hidden_size if head == "scalar" else 0)
        if not plan.lora.only_optimize_lora:
            trainable += total - (arch.quantizable_params if plan.lora.quantizes(role) else 0)
    else:
        trainable = total
    items.append(Item(label, "gradients", trainable * b / (n if plan.zero_stage >= 2 else 1),
                      f"{trainable / 1e6:.1f}M trained params"))
    opt = trainable * (12 if plan.mixed else 8) / (n if plan.zero_stage >= 1 else 1)
    if plan.offload_optimizer:
        items.append(Item(label, "optimizer states", 0.0, f"offloaded to CPU ({opt / GiB:.2f} GiB there)"))
    else:
        items.append(Item(label, "optimizer states", opt, "AdamW m, v" + (" + fp32 master" if plan.mixed else "")))
    return items


def activation_bytes(arch: Architecture, plan: Plan, role: str, rows: int, seq: int, scored: int,
                     head: str) -> float:
    """Memory backward keeps for one micro-batch (see the module docstring)."""
    b = plan.dtype_bytes
    h, i = arch.hidden_size, arch.intermediate_size
    kvd = arch.num_kv_heads * arch.head_dim
    per_token_block = 7 * h + 4 * kvd + 4 * i
    if plan.lora.applies_to(role) and plan.lora.dropout > 0:
        # peft applies dropout to each adapted layer's input before lora_A: one more copy of it.
        lin = arch.linears()
        targets = plan.lora.target_modules
        names = list(lin) if targets == "all-linear" else list(targets)
        per_token_block += sum(lin[nm][0] for nm in names if nm in lin)
    tokens = rows * seq
    if plan.gradient_checkpointing:
        blocks = tokens * (arch.num_layers * h + per_token_block) * b
    else:
        blocks = tokens * arch.num_layers * per_token_block * b
    logits = rows * scored * arch.vocab_size * (b + 8) if head == "lm" else 0
    return blocks + logits


def kv_cache_bytes(arch: Architecture, plan: Plan, batch: int, tokens: int) -> float:
    return 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * tokens * batch * plan.dtype_bytes


def estimate(arch: Architecture, plan: Plan, stage: str = "ppo", device_type: str = "cuda") -> Estimate:
    """The per-rank memory of `stage` (sft, reward or ppo). Pure: no device, no files."""
    if stage not in ("sft", "reward", "ppo"):
        raise ValueError(f"stage must be sft, reward or ppo, got {stage!r}")
    est = Estimate(stage=stage, overhead=float(GiB) if device_type == "cuda" else 0.0)
    s, p_len, r = plan.max_length, plan.prompt_length, plan.new_tokens
    if stage == "sft":
        est.items += _model_items(arch, plan, "sft", "policy", "lm", trained=True)
        est.phases["training"] = [Item("policy", "activations",
                                       activation_bytes(arch, plan, "sft", plan.micro_batch, s, s, "lm"),
                                       f"micro-batch {plan.micro_batch} x {s} tokens")]
        return est
    if stage == "reward":
        rows = plan.reward_micro_batch * plan.ranking_k
        est.items += _model_items(arch, plan, "reward", "reward model", "scalar", trained=True)
        est.phases["training"] = [Item("reward model", "activations",
                                       activation_bytes(arch, plan, "reward", rows, s, 0, "scalar"),
                                       f"{plan.reward_micro_batch} records x {plan.ranking_k} responses x {s} "
                                       f"tokens")]
        return est
    # the RL stage (PPO or a critic-free algorithm)
    est.items += _model_items(arch, plan, "actor", "actor", "lm", trained=True)
    if plan.critic:
        est.items += _model_items(arch, plan, "critic", "critic", "scalar", trained=True)
    else:
        est.notes.append("critic: none (the advantage estimator needs none)")
    if not plan.reference:
        est.notes.append("reference: none (no KL term)")
    elif plan.lora.reference_is_actor:
        est.notes.append("reference: the actor with adapters disabled (no memory)")
    else:
        est.items += _model_items(arch, plan, "reference", "reference", "lm", trained=False)
    if not plan.reward_model:
        est.notes.append("reward: no reward model (no reward source is one)")
    elif plan.lora.reward_is_critic and plan.critic:
        est.notes.append("reward: the critic's backbone with adapters disabled (only its head, negligible)")
    else:
        est.items += _model_items(arch, plan, "reward_frozen", "reward", "scalar", trained=False)
    seq = p_len + r
    gen = [Item("actor", "KV cache", kv_cache_bytes(arch, plan, plan.rollout_per_rank, seq),
                f"{plan.rollout_per_rank} sequences x {seq} tokens")]
    if plan.zero_stage == 3 and plan.hybrid:
        gen.append(Item("actor", "generation copy", arch.params("lm") * plan.dtype_bytes,
                        "hybrid engine: gathered, hook-free actor (LoRA fused)"))
    est.phases["generation"] = gen
    actor_act = activation_bytes(arch, plan, "actor", plan.micro_batch, seq, r + 1, "lm")
    critic_act = activation_bytes(arch, plan, "critic", plan.micro_batch, seq, 0, "scalar") if plan.critic else 0.0
    which = "actor" if actor_act >= critic_act else "critic"
    est.phases["training"] = [Item(which, "activations", max(actor_act, critic_act),
                                   f"micro-batch {plan.micro_batch} x {seq} tokens")]
    return est


# ---------------------------------------------------------------------------- from a run config

def plan_from_config(cfg, ds_config: Dict, world_size: int = 1, device_type: str = "cuda",
                     precision: Optional[str] = None) -> Plan:
    """A Plan from an RLHFConfig and the DeepSpeed JSON. `precision` defaults to the config's dtype
    (auto: bf16 on a GPU, fp32 on CPU)."""
    zero = ds_config.get("zero_optimization", {})
    if precision is None:
        precision = cfg.model.dtype if cfg.model.dtype != "auto" else ("bf16" if device_type == "cuda" else "fp32")
    p = cfg.ppo
    from .rl.advantages import advantage_estimator
    from .rewards import needs_reward_model
    return Plan(
        world_size=world_size, zero_stage=int(zero.get("stage", 0)),
        offload_optimizer=zero.get("offload_optimizer", {}).get("device", "none") not in (None, "none"),
        precision=precision,
        micro_batch=(p.micro_batch_size or max(1, p.minibatch_size // world_size)),
        max_length=cfg.data.max_length, prompt_length=cfg.data.max_prompt_length,
        new_tokens=cfg.generation.max_new_tokens,
        rollout_per_rank=max(1, p.rollout_batch_size * p.n_samples // world_size),
        gradient_checkpointing=cfg.model.gradient_checkpointing, hybrid=cfg.hybrid.enabled,
        lora=LoRASettings.from_config(cfg.lora),
        reward_micro_batch=(cfg.reward.micro_batch_size or max(1, cfg.reward.batch_size // world_size)),
        critic=advantage_estimator(p.advantage_estimator).needs_critic, reference=p.kl_mode != "off",
        reward_model=needs_reward_model(cfg.rewards.sources),
    )


def stage_plan(plan: Plan, cfg, stage: str, world_size: int) -> Plan:
    """The SFT stage trains with its own micro-batch."""
    if stage != "sft":
        return plan
    return replace(plan, micro_batch=cfg.sft.micro_batch_size or max(1, cfg.sft.batch_size // world_size))

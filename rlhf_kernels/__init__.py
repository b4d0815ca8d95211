"""rlhf_kernels: fused per-token RLHF math (Triton on CUDA, memory-efficient torch elsewhere).

    gather_logprobs         log-softmax + gather (+ entropy) with an online max/sum, no N x V temporary
    fused_linear_logprobs   LM head + gather_logprobs, chunked: (N, V) logits never materialised
    per_token_kl            k1 / k2 / k3 KL estimates, masked
    kl_shaped_rewards       -kl_coef * KL plus the score at the last response token, one pass
    gae                     GAE as a reverse associative scan (any T, fp32)

Each takes `backend="auto" | "triton" | "torch" | "reference"`; `set_default_backend`
and `use_backend` force one everywhere (see `_backend`). Each `<op>_reference` is the
plain torch twin from `rlhf_ds.rl`.

The package lives in `rlhf_kernels/`, never in a folder named `kernels`: Hugging Face
publishes an unrelated package `kernels` that `transformers` and `bitsandbytes` import
when they can find one, and a folder of that name on sys.path would answer for it.
"""
from ._backend import BACKENDS, get_default_backend, interpreter_active, set_default_backend, use_backend
from .fused_linear_logprobs import fused_linear_logprobs, fused_linear_logprobs_reference
from .gae import gae, gae_reference
from .gather_logprobs import entropy_reference, gather_logprobs, gather_logprobs_reference
from .kl import kl_shaped_rewards, kl_shaped_rewards_reference, per_token_kl, per_token_kl_reference

__all__ = [
    "BACKENDS", "set_default_backend", "get_default_backend", "use_backend", "interpreter_active",
    "gather_logprobs", "fused_linear_logprobs", "per_token_kl", "kl_shaped_rewards", "gae",
    "gather_logprobs_reference", "fused_linear_logprobs_reference", "per_token_kl_reference",
    "kl_shaped_rewards_reference", "gae_reference", "entropy_reference",
]

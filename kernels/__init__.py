"""rlhf_kernels: fused per-token RLHF math (Triton on CUDA, memory-efficient torch elsewhere).

    gather_logprobs         log-softmax + gather (+ entropy) with an online max/sum, no N x V temporary
    fused_linear_logprobs   LM head + gather_logprobs, chunked: (N, V) logits never materialised
    per_token_kl            k1 / k2 / k3 KL estimates, masked
    kl_shaped_rewards       -kl_coef * KL plus the score at the last response token, one pass
    gae                     GAE as a reverse associative scan (any T, fp32)

Each takes `backend="auto" | "triton" | "torch" | "reference"`; `set_default_backend`
and `use_backend` force one everywhere (see `_backend`). Each `<op>_reference` is the
plain torch twin from `rlhf_ds.rl`.

The folder is `kernels/` but the package is `rlhf_kernels` (setup.py maps it), because
Hugging Face publishes an unrelated package `kernels` that `transformers` probes for.
"""
if __name__ != "rlhf_kernels":
    # Imported under another name, e.g. as `kernels` with the repository root on sys.path.
    # transformers' is_kernels_available() may import this file as `kernels` and read
    # `__version__`: define nothing (no version, no API) and raise nothing, so the probe
    # answers "not installed" -- unless Hugging Face's `kernels` really is installed, in
    # which case it is loaded in our place. Use `import rlhf_kernels`.
    __all__: list = []

    def _hand_over_to_the_real_kernels() -> None:
        """If Hugging Face's `kernels` is installed further along sys.path, load it in our
        place (the import system returns whatever sys.modules holds once this file has
        run), so that shadowing it from the repository root breaks nothing."""
        import importlib.machinery
        import importlib.util
        import os
        import sys

        if __name__ != "kernels":
            return
        this = sys.modules.get("kernels")
        me = os.path.realpath(__file__)
        ours = os.path.dirname(os.path.dirname(me))
        path = [p for p in sys.path if os.path.realpath(p or os.curdir) != ours]
        try:
            spec = importlib.machinery.PathFinder.find_spec("kernels", path)
            if spec is None or spec.loader is None or os.path.realpath(spec.origin or "") == me:
                return
            real = importlib.util.module_from_spec(spec)
            sys.modules["kernels"] = real
            spec.loader.exec_module(real)
        except Exception:  # never raise from a probe: stay the empty module
            if this is not None:
                sys.modules["kernels"] = this

    _hand_over_to_the_real_kernels()
    del _hand_over_to_the_real_kernels
else:
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

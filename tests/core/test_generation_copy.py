"""The hybrid engine's generation copy: same class, names and dtype as the model, eval mode, no grads."""
import pytest
import torch

from rlhf_ds.engine.hybrid import empty_copy, release_storage

# transformers' model classes are imported inside the test: importing them imports triton, and the
# kernel tests (collected later) need to import triton first, in interpreter mode (tests/kernels/conftest.py).


@pytest.mark.parametrize("subclass", [False, True])
def test_copy_keeps_class_names_and_dtype(subclass):
    from transformers import LlamaConfig, LlamaForCausalLM

    class NotRegisteredWithAuto(LlamaForCausalLM):
        """An architecture AutoModelForCausalLM does not build from its config (remote code, say)."""

    cls = NotRegisteredWithAuto if subclass else LlamaForCausalLM
    config = LlamaConfig(hidden_size=32, num_hidden_layers=1, intermediate_size=64, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=50)
    model = cls(config).to(torch.bfloat16)
    copy = empty_copy(model, torch.device("cpu"))
    assert type(copy) is cls and not copy.training
    assert [n for n, _ in copy.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad or p.is_meta for p in copy.parameters())
    release_storage(copy)
    assert all(t.numel() == 0 for t in [*copy.parameters(), *copy.buffers()])

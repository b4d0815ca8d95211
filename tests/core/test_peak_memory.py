"""peak_memory_bytes (the summary's peak_memory_gib) follows what the process really held."""
import torch

from rlhf_ds.peak_memory import peak_memory_bytes


def test_peak_resident_memory_rises_by_what_a_new_tensor_holds():
    cpu = torch.device("cpu")
    before = peak_memory_bytes(cpu)
    size = before + 256 * 1024 ** 2               # more than the peak so far: it must raise the peak
    x = torch.ones(size // 4, dtype=torch.float32)   # ones (not empty): every page is touched
    after = peak_memory_bytes(cpu)
    assert after >= before + 0.9 * size, (before, after)
    del x
    assert peak_memory_bytes(cpu) >= after          # a peak never falls

"""Benchmark: per-token KL (k3) with KL-shaped rewards in one pass, against eager and torch.compile.

Providers: eager = the twin `rlhf_ds.rl.kl_shaped_rewards` (several elementwise kernels,
a last-index reduction and a boolean-indexed scatter that synchronises with the host);
compile = torch.compile of it (CUDA only); ours = `rlhf_kernels.kl_shaped_rewards`
(one Triton program per row on CUDA; the sync-free torch path on CPU). Liger-Kernel has
no counterpart (its KL loss is over full distributions, not sampled tokens).
"""
import pytest
import torch

import kernel_harness as H
from rlhf_kernels import kl_shaped_rewards, kl_shaped_rewards_reference

SHAPES = [(64, 1024), (256, 4096), (8, 32768)]  # (B, T)
COLUMNS = ["provider", "B", "T", "ms", "ms_p20", "ms_p80", "peak_mb", "gbs", "bw_share",
           "speedup_vs_eager", "speedup_vs_compile", "mem_ratio_vs_eager", "status"]
BYTES_PER_TOKEN = 4 + 4 + 1 + 4 + 4  # read logprobs, ref_logprobs (fp32), mask (bool); write kl, rewards


def _inputs(B, T, device):
    gen = torch.Generator(device=device).manual_seed(T)
    lp = torch.randn(B, T, device=device, generator=gen) * 0.5 - 2
    ref = lp + 0.1 * torch.randn(B, T, device=device, generator=gen)
    mask = torch.rand(B, T, device=device, generator=gen) > 0.1
    scores = torch.randn(B, device=device, generator=gen)
    return scores, lp, ref, mask


def _run(device, rows, reps):
    on_cuda = device == "cuda"
    providers = {"eager": kl_shaped_rewards_reference, "ours": kl_shaped_rewards}
    if on_cuda:
        compiled = H.try_compile(kl_shaped_rewards_reference)
        if compiled is not None:
            providers["compile"] = compiled
    peak_bw = H.device_bandwidth_gbs() if on_cuda else None
    for B, T in SHAPES:
        args = _inputs(B, T, device)
        r, kl = kl_shaped_rewards(*args, 0.05, "k3")
        r_ref, kl_ref = kl_shaped_rewards_reference(*args, 0.05, "k3")
        torch.testing.assert_close(r, r_ref, rtol=1e-5, atol=1e-6)
        for name, fn in providers.items():
            row = {"provider": name, "B": B, "T": T}
            row.update(H.measure(lambda fn=fn: fn(*args, 0.05, "k3"), on_cuda, reps=reps))
            if row["status"] == "ok":
                row["gbs"] = B * T * BYTES_PER_TOKEN / (row["ms"] * 1e-3) / 1e9
                if peak_bw:
                    row["bw_share"] = row["gbs"] / peak_bw
            rows.append(row)
    H.add_ratios(rows, ("B", "T"))


def _worst(rows, key):
    vals = [(r[key], f"B={r['B']} T={r['T']}") for r in rows if r["provider"] == "ours" and key in r]
    return min(vals, key=lambda v: v[0]) if vals else None


def test_cpu_torch_path_vs_eager(capsys):
    rows = []
    with H.cpu_threads():
        _run("cpu", rows, reps=5)
        with capsys.disabled():
            path = H.write_results("kl_shaped_rewards", rows, COLUMNS, [],
                                   notes="CPU: the torch path is the twin's elementwise math plus a "
                                         "sync-free scatter, so parity is expected; k3 estimator")
    H.check_rows_produced(rows, ("eager", "ours"))
    assert path.exists()


@pytest.mark.gpu
def test_gpu(capsys):
    rows = []
    _run("cuda", rows, reps=0)
    targets = []
    worst = _worst(rows, "speedup_vs_eager")
    if worst:
        targets.append({"target": ">= 5x eager", "value": worst[0], "where": f"worst at {worst[1]}",
                        "met": worst[0] >= 5.0, "threshold": 5.0})
    with capsys.disabled():
        path = H.write_results("kl_shaped_rewards", rows, COLUMNS, targets, notes="fp32 log-probs, bool mask, k3")
    H.check_rows_produced(rows, ("eager", "ours"))
    assert path.exists()

"""Benchmark: GAE as a scan against the Python loop over time that every framework uses.

Providers: loop = the twin `rlhf_ds.rl.gae` (a Python loop over T); torch = the blocked
torch scan of `rlhf_kernels` (what runs on CPU); compile = torch.compile of a
vectorised log-depth (Hillis-Steele) form of the same recurrence, defined below (CUDA
only); ours = `rlhf_kernels.gae` (the Triton reverse scan on CUDA; the blocked torch
scan on CPU, so there "ours" and "torch" are the same code).
"""
import pytest
import torch
import torch.nn.functional as F

import kernel_harness as H
from rlhf_kernels import gae, gae_reference
from rlhf_kernels.gae import torch_gae

SHAPES = [(64, 1024), (256, 4096), (8, 32768)]  # (B, T)
COLUMNS = ["provider", "B", "T", "ms", "ms_p20", "ms_p80", "peak_mb", "speedup_vs_loop", "speedup_vs_compile",
           "speedup_vs_torch", "status"]
GAMMA, LAM = 0.99, 0.95


def _suffix_scan_doubling(a, b):
    """y_t = a_t y_{t+1} + b_t (y = 0 past the end) in log2(T) vectorised steps."""
    T, k = a.shape[1], 1
    while k < T:
        b = torch.cat([b[:, :-k] + a[:, :-k] * b[:, k:], b[:, -k:]], dim=1)
        a = torch.cat([a[:, :-k] * a[:, k:], a[:, -k:]], dim=1)
        k *= 2
    return b


def gae_doubling(rewards, values, action_mask, gamma, lam):
    """A vectorised GAE (same mask semantics), the form torch.compile is given."""
    m = action_mask.bool()
    r, v = rewards.float(), values.float()
    nv = F.pad(_suffix_scan_doubling((~m).float(), torch.where(m, v, 0.0))[:, 1:], (0, 1))
    delta = r + gamma * nv - v
    run = _suffix_scan_doubling(torch.where(m, gamma * lam, 1.0), torch.where(m, delta, 0.0))
    adv = torch.where(m, run, 0.0)
    return adv, torch.where(m, adv + v, 0.0)


def _inputs(B, T, device):
    gen = torch.Generator(device=device).manual_seed(T)
    r = torch.randn(B, T, device=device, generator=gen)
    v = torch.randn(B, T, device=device, generator=gen)
    m = torch.rand(B, T, device=device, generator=gen) > 0.05
    m[:, -T // 10:] = False  # trailing padding
    return r, v, m


def _run(device, rows, reps):
    on_cuda = device == "cuda"
    providers = {"loop": gae_reference, "torch": torch_gae, "ours": gae}
    if on_cuda:
        compiled = H.try_compile(gae_doubling)
        if compiled is not None:
            providers["compile"] = compiled
    for B, T in SHAPES:
        r, v, m = _inputs(B, T, device)
        want = gae_reference(r, v, m, GAMMA, LAM)
        for name in ("ours", "torch", "compile"):
            if name in providers:
                got = providers[name](r, v, m, GAMMA, LAM)
                for a, b in zip(got, want):
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        for name, fn in providers.items():
            if not on_cuda and name == "torch":
                continue  # on CPU "ours" is this very path
            row = {"provider": name, "B": B, "T": T}
            row.update(H.measure(lambda fn=fn: fn(r, v, m, GAMMA, LAM), on_cuda,
                                 reps=(2 if name == "loop" else reps)))
            rows.append(row)
    H.add_ratios(rows, ("B", "T"))


def _worst(rows, key, min_t=0):
    vals = [(r[key], f"B={r['B']} T={r['T']}") for r in rows
            if r["provider"] == "ours" and key in r and r["T"] >= min_t]
    return min(vals, key=lambda v: v[0]) if vals else None


def _target(label, worst, threshold):
    if worst is None:
        return None
    return {"target": label, "value": worst[0], "where": f"worst at {worst[1]}", "met": worst[0] >= threshold,
            "threshold": threshold}


def test_cpu_scan_vs_loop(capsys):
    rows = []
    with H.cpu_threads():
        _run("cpu", rows, reps=5)
        at_1024 = [r for r in rows if r["provider"] == "ours" and r["T"] == 1024 and "speedup_vs_loop" in r]
        targets = [_target(">= 10x the Python loop at T = 1024", _worst(at_1024, "speedup_vs_loop"), 10.0)]
        targets = [t for t in targets if t]
        with capsys.disabled():
            path = H.write_results("gae", rows, COLUMNS, targets, notes="CPU: blocked torch scan vs the loop; fp32")
    H.check_rows_produced(rows, ("loop", "ours"))
    assert path.exists()


@pytest.mark.gpu
def test_gpu(capsys):
    rows = []
    _run("cuda", rows, reps=0)
    targets = [t for t in [
        _target(">= 100x the Python loop at T >= 1024", _worst(rows, "speedup_vs_loop", 1024), 100.0),
        _target(">= par with torch.compile of a vectorised form", _worst(rows, "speedup_vs_compile"), 1.0),
    ] if t]
    with capsys.disabled():
        path = H.write_results("gae", rows, COLUMNS, targets, notes="fp32 rewards and values, bool mask")
    H.check_rows_produced(rows, ("loop", "ours", "torch"))
    assert path.exists()

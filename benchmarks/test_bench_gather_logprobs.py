"""Benchmark: gather_logprobs (log-softmax + gather) against eager, torch.compile and Liger.

Providers: eager = the plain twin `rlhf_ds.rl.gather_logprobs`; compile = torch.compile
of it (CUDA only); ours = `rlhf_kernels.gather_logprobs` (Triton on CUDA, the chunked
torch path on CPU); liger = Liger-Kernel's cross entropy with reduction="none" (the
per-token -log p; when installed). Passes: forward, forward + backward.
"""
import itertools

import pytest
import torch

import kernel_harness as H
from rlhf_kernels import gather_logprobs, gather_logprobs_reference

GPU_SHAPES = list(itertools.product([4096, 16384, 32768], [32000, 128256, 151936]))  # (N tokens, V)
CPU_SHAPES = [(1024, 32000), (128, 151936)]
COLUMNS = ["provider", "pass", "N", "V", "dtype", "ms", "ms_p20", "ms_p80", "peak_mb", "gbs", "bw_share",
           "speedup_vs_eager", "speedup_vs_compile", "speedup_vs_liger", "mem_ratio_vs_eager", "status"]


def _providers(on_cuda):
    providers = {
        "eager": lambda x, y: gather_logprobs_reference(x, y),
        "ours": lambda x, y: gather_logprobs(x, y),
    }
    if on_cuda:
        compiled = H.try_compile(gather_logprobs_reference)
        if compiled is not None:
            providers["compile"] = lambda x, y: compiled(x, y)
        liger = H.optional_liger()
        if liger is not None:
            providers["liger"] = lambda x, y: -liger.liger_cross_entropy(x, y, reduction="none")
    return providers


def _bytes_moved(N, V, elem, passes):
    fwd = N * V * elem + N * 8 + N * 4            # logits read once, labels, log-probs written
    return fwd if passes == "fwd" else fwd + 2 * N * V * elem  # backward: read logits, write grad


def _run_shape(N, V, dtype, device, rows, reps):
    on_cuda = device == "cuda"
    gen = torch.Generator(device=device).manual_seed(N + V)
    x = torch.randn(N, V, device=device, dtype=dtype, generator=gen)
    y = torch.randint(0, V, (N,), device=device, generator=gen)
    g = torch.randn(N, device=device, generator=gen)
    # correctness at the benchmark shape (on a row subset where the eager twin would be large)
    check = slice(0, min(N, 256))
    torch.testing.assert_close(gather_logprobs(x[check], y[check]), gather_logprobs_reference(x[check], y[check]),
                               rtol=1e-5, atol=1e-4)
    xg = x.detach().requires_grad_(True)
    peak_bw = H.device_bandwidth_gbs() if on_cuda else None
    for name, fn in _providers(on_cuda).items():
        for passes in ("fwd", "fwd+bwd"):
            if passes == "fwd":
                call = (lambda fn=fn: fn(x, y))
                grad_to_none = None
            else:
                call = (lambda fn=fn: fn(xg, y).backward(g))
                grad_to_none = [xg]
            row = {"provider": name, "pass": passes, "N": N, "V": V, "dtype": str(dtype).replace("torch.", "")}
            row.update(H.measure(call, on_cuda, reps=reps, grad_to_none=grad_to_none))
            if row["status"] == "ok":
                row["gbs"] = _bytes_moved(N, V, x.element_size(), passes) / (row["ms"] * 1e-3) / 1e9
                if peak_bw:
                    row["bw_share"] = row["gbs"] / peak_bw
            rows.append(row)
    del x, xg


def _targets_gpu(rows):
    ours = [r for r in rows if r["provider"] == "ours" and r.get("status") == "ok"]
    fwd = [r for r in ours if r["pass"] == "fwd"]
    both = [r for r in ours if r["pass"] == "fwd+bwd"]
    return [t for t in [
        _target("fwd >= 80% of DRAM bandwidth roofline", fwd, "bw_share", 0.8),
        _target("fwd >= 3x eager", fwd, "speedup_vs_eager", 3.0),
        _target("fwd >= 1.3x torch.compile", fwd, "speedup_vs_compile", 1.3),
        _target("fwd >= Liger", fwd, "speedup_vs_liger", 1.0),
        _target("fwd+bwd >= 2x eager", both, "speedup_vs_eager", 2.0),
    ] if t is not None]


def _target(label, rows, key, threshold, higher_is_better=True):
    vals = [(r[key], f"N={r['N']} V={r['V']}") for r in rows if key in r]
    if not vals:
        return None
    value, where = (min if higher_is_better else max)(vals, key=lambda v: v[0])
    met = value >= threshold if higher_is_better else value <= threshold
    return {"target": label, "value": value, "where": f"worst at {where}", "met": bool(met), "threshold": threshold}


def test_cpu_torch_path_vs_eager(capsys):
    rows = []
    with H.cpu_threads():
        for N, V in CPU_SHAPES:
            _run_shape(N, V, torch.float32, "cpu", rows, reps=3)
        H.add_ratios(rows, ("pass", "N", "V"))
        ours = [r for r in rows if r["provider"] == "ours"]
        targets = [t for t in [
            _target("fwd peak extra memory <= 25% of eager's", [r for r in ours if r["pass"] == "fwd"],
                    "mem_ratio_vs_eager", 0.25, higher_is_better=False),
            _target("fwd+bwd peak extra memory <= 50% of eager's (the N x V gradient is needed by both)",
                    [r for r in ours if r["pass"] == "fwd+bwd"], "mem_ratio_vs_eager", 0.5,
                    higher_is_better=False),
        ] if t is not None]
        with capsys.disabled():
            path = H.write_results("gather_logprobs", rows, COLUMNS, targets,
                                   notes="CPU: chunked torch path vs the plain twin, fp32 logits")
    H.check_rows_produced(rows, ("eager", "ours"))
    assert path.exists()
    for r in ours:  # the structural claim (not a timing): no N x V temporary in the forward pass
        if r["pass"] == "fwd":
            assert r["mem_ratio_vs_eager"] < 0.5, r


@pytest.mark.gpu
def test_gpu_bf16(capsys):
    rows = []
    for N, V in GPU_SHAPES:
        _run_shape(N, V, torch.bfloat16, "cuda", rows, reps=0)
    H.add_ratios(rows, ("pass", "N", "V"))
    targets = _targets_gpu(rows)
    with capsys.disabled():
        path = H.write_results("gather_logprobs", rows, COLUMNS, targets,
                               notes="bf16 logits; temperature 1; labels without ignore_index")
    H.check_rows_produced(rows, ("ours",))
    H.check_rows_produced(rows, ("eager", "compile"), allow_oom=("eager", "compile"))
    assert path.exists()

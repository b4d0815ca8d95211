import math

import pytest
import torch

from rlhf_ds.rl import kendall_tau, ranking_metrics, spearman_rho


def sign(x):
    return (x > 0) - (x < 0)


def loop_kendall_tau_b(x, y):
    n = len(x)
    s = n1 = n2 = 0
    for i in range(n):
        for j in range(i + 1, n):
            s += sign(x[i] - x[j]) * sign(y[i] - y[j])
            n1 += x[i] == x[j]
            n2 += y[i] == y[j]
    n0 = n * (n - 1) / 2
    denominator = math.sqrt((n0 - n1) * (n0 - n2))
    return s / denominator if denominator > 0 else float("nan")


def loop_average_ranks(x):
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # positions i..j share their average 1-based rank
        i = j + 1
    return ranks


def loop_spearman(x, y):
    rx, ry = loop_average_ranks(x), loop_average_ranks(y)
    n = len(x)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else float("nan")


def per_group(fn, scores, ranks):
    out = []
    for b in range(scores.shape[0]):
        keep = [k for k in range(scores.shape[1]) if ranks[b, k] >= 0]
        x = [float(scores[b, k]) for k in keep]
        y = [-int(ranks[b, k]) for k in keep]  # rank 0 is best -> highest preference
        out.append(fn(x, y) if len(keep) >= 2 else float("nan"))
    return torch.tensor(out, dtype=torch.float64)


def test_match_loops_with_ties_and_missing_entries():
    g = torch.Generator().manual_seed(0)
    B, K = 8, 6
    scores = torch.randint(0, 4, (B, K), generator=g).float()  # many ties in the scores
    ranks = torch.stack([torch.randperm(K, generator=g) for _ in range(B)])
    ranks[0, 2:] = -1
    ranks[1, 1:] = -1                      # single entry: undefined
    ranks[2] = torch.tensor([0, 0, 1, 1, 2, 2])  # ties in the reference
    scores[3] = 1.0                        # all scores tied: undefined
    torch.testing.assert_close(kendall_tau(scores, ranks), per_group(loop_kendall_tau_b, scores, ranks),
                               equal_nan=True)
    torch.testing.assert_close(spearman_rho(scores, ranks), per_group(loop_spearman, scores, ranks),
                               equal_nan=True)


def test_hand_values():
    # ranks [2, 1, 0] mean entry 2 is best. Preference y = -ranks = [-2, -1, 0].
    # scores [1, 2, 3]: same order -> tau = rho = 1; scores [3, 2, 1]: reversed -> -1
    # scores [1, 3, 2]: pairs (0,1) concordant, (0,2) concordant, (1,2) discordant -> tau = (2 - 1) / 3
    #   rank of scores [1, 3, 2], of y [1, 2, 3]: d = [0, 1, -1], rho = 1 - 6 * 2 / (3 * 8) = 0.5
    # scores [1, 1, 2] (a tie): concordant 2, tied-in-x 1: tau_b = 2 / sqrt((3 - 1) * 3) = 0.8164966
    #   average ranks [1.5, 1.5, 3] vs [1, 2, 3]: centred [-.5, -.5, 1] and [-1, 0, 1]:
    #   rho = 1.5 / sqrt(1.5 * 2) = 0.8660254
    scores = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 1.0, 2.0]])
    ranks = torch.tensor([[2, 1, 0]] * 4)
    torch.testing.assert_close(kendall_tau(scores, ranks),
                               torch.tensor([1.0, -1.0, 1 / 3, 0.8164966], dtype=torch.float64))
    torch.testing.assert_close(spearman_rho(scores, ranks),
                               torch.tensor([1.0, -1.0, 0.5, 0.8660254], dtype=torch.float64))


def test_ranking_metrics_average_only_defined_groups():
    # group 0: tau = rho = 1; group 1: reversed, -1; group 2: single entry (undefined); group 3: masked to 1 entry
    # averages: (1 - 1) / 2 = 0 for both; 2 defined groups
    scores = torch.tensor([[1.0, 2.0], [2.0, 1.0], [5.0, 0.0], [1.0, 2.0]])
    ranks = torch.tensor([[1, 0], [1, 0], [0, -1], [1, 0]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [0, 1]])
    metrics = ranking_metrics(scores, ranks, mask)
    assert metrics["kendall_tau"].item() == 0.0 and metrics["spearman_rho"].item() == 0.0
    assert metrics["num_groups"].item() == 2
    only_undefined = ranking_metrics(torch.zeros(1, 3), torch.tensor([[0, 1, 2]]))
    assert math.isnan(only_undefined["kendall_tau"].item()) and only_undefined["num_groups"].item() == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="ranks must be an integer tensor"):
        kendall_tau(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="shape mismatch"):
        spearman_rho(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), mask=torch.ones(2, 2))

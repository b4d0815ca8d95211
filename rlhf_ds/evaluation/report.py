"""An evaluation's outputs: `evaluation.json`, `evaluation.md` (a markdown table), `reward_vs_kl.png`
(each model a point: KL to the reference against reward-model score, and gold reward when known)
and `samples.jsonl` (every response with its figures). Written by rank 0 only.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from ..files import write_text_atomic

COLUMNS = [  # (key, header, format)
    ("rm_score", "RM score", "{:.4f}"),
    ("gold_reward", "gold reward", "{:.4f}"),
    ("win_rate", "win rate", "{:.3f}"),
    ("kl", "KL to ref", "{:.3f}"),
    ("response_length", "length", "{:.1f}"),
    ("distinct_1", "distinct-1", "{:.3f}"),
    ("distinct_2", "distinct-2", "{:.3f}"),
    ("sft_perplexity", "SFT ppl", "{:.3f}"),
]


def _cell(value, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def markdown_table(results: Dict) -> str:
    """The figures of every model, one row each; the win rate with its wins / ties / losses."""
    models = results["models"]
    cols = [c for c in COLUMNS if c[0] != "gold_reward" or any(m["gold_reward"] is not None for m in models)]
    lines = ["| model | " + " | ".join(h for _, h, _ in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for m in models:
        cells = []
        for key, _, fmt in cols:
            cell = _cell(m[key], fmt)
            if key == "win_rate":
                cell += f" ({m['wins']}/{m['ties']}/{m['losses']})"
            cells.append(cell)
        lines.append(f"| {m['model']} | " + " | ".join(cells) + " |")
    notes = [
        "",
        f"{results['num_prompts']} held-out prompts from {results['prompts']}; one sampled response per model "
        f"and prompt ({_settings(results['generation'])}).",
        f"RM score: reward model {results['reward_model']}. Win rate: against {results['baseline']} on the same "
        f"prompt, judged by the reward model; a tie counts half (wins/ties/losses in brackets).",
        f"KL to ref: sequence KL(model || {results['reference']}) in nats, estimated from the model's own samples.",
        f"Distinct-n: distinct word n-grams over all n-grams of a model's responses. SFT ppl: perplexity on "
        f"{results['sft_data'] or 'no SFT data (n/a)'}.",
    ]
    return "\n".join(lines + notes) + "\n"


def _settings(g: Dict) -> str:
    if not g.get("do_sample", True):
        return f"greedy, up to {g['max_new_tokens']} new tokens"
    return (f"temperature {g['temperature']}, top_p {g['top_p']}, top_k {g['top_k']}, up to "
            f"{g['max_new_tokens']} new tokens")


def plot_reward_vs_kl(results: Dict, path: str) -> Optional[str]:
    """Each model a point at (KL to the reference, mean RM score); gold reward as a second marker."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in results["models"] if m["kl"] is not None and m["rm_score"] is not None]
    if not models:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.2))
    xs = [m["kl"] for m in models]
    ax.scatter(xs, [m["rm_score"] for m in models], marker="o", label="reward-model score")
    for m in models:
        ax.annotate(m["model"], (m["kl"], m["rm_score"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if all(m["gold_reward"] is not None for m in models):
        ax.scatter(xs, [m["gold_reward"] for m in models], marker="^", label="gold reward")
    ax.set_xlabel("KL to the reference (nats per response)")
    ax.set_ylabel("mean reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_outputs(results: Dict, rows: List[Dict], out_dir: str) -> Dict[str, str]:
    """Write every output file into `out_dir`; returns {what: path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "evaluation.json"), "markdown": os.path.join(out_dir, "evaluation.md"),
             "samples": os.path.join(out_dir, "samples.jsonl")}
    write_text_atomic(paths["json"], json.dumps(results, indent=2) + "\n")
    write_text_atomic(paths["markdown"], markdown_table(results))
    ordered = sorted(rows, key=lambda r: (r["prompt"], results["model_order"].index(r["model"])))
    write_text_atomic(paths["samples"], "".join(json.dumps(r) + "\n" for r in ordered))
    plot = plot_reward_vs_kl(results, os.path.join(out_dir, "reward_vs_kl.png"))
    if plot:
        paths["plot"] = plot
    return paths

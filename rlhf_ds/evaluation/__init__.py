"""Using trained models: compare them on held-out prompts (launch/evaluate.py) and chat with one
(launch/chat.py).

    plan.py          what to compare and on what, found from the model directories' run folder
    passes.py        the engine passes: sample + own log-probs + perplexity, reference, reward model
    text_metrics.py  distinct-n, win / tie / loss (pure Python)
    summary.py       per-response rows -> one line of figures per model
    report.py        evaluation.json, evaluation.md, reward_vs_kl.png, samples.jsonl
    run.py           run_evaluation(plan): the steps in order
    cli.py           the evaluate command line
    chat.py          an interactive chat session with one exported model
    streaming.py     printing tokens as they are generated
"""

"""launch/chat.py: a conversation piped through stdin, the streamer, the context limit."""
import io
import os
import subprocess
import sys

import torch

from .conftest import REPO, clean_env

CHAT = os.path.join(REPO, "launch", "chat.py")


def _chat(args, stdin, cwd):
    return subprocess.run([sys.executable, CHAT, *args], input=stdin, cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=clean_env())


def _prompts(stderr):
    blocks = stderr.split("--- prompt ---\n")[1:]
    return [b.split("\n--- end of prompt ---")[0] for b in blocks]


def test_piped_conversation_keeps_history_until_reset(eval_run, tmp_path):
    """Run from a directory that is not the repository; three turns, with /reset before the third."""
    proc = _chat([os.path.join(eval_run, "sft"), "--show_prompt", "--max_new_tokens", "6", "--seed", "0"],
                 "describe the cat\n\ndescribe the dog\n/reset\ndescribe the fish\n/exit\ndescribe the owl\n",
                 cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    prompts = _prompts(proc.stderr)
    assert len(prompts) == 3                    # one per reply: the blank line is skipped, nothing after /exit
    first, second, third = prompts
    assert "describe the cat" in first and "dog" not in first
    # The second prompt is the first one, then the model's reply and the new turn, in the model's template.
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(os.path.join(eval_run, "sft"))
    after_reply = tok.apply_chat_template(
        [{"role": "user", "content": "describe the cat"}, {"role": "assistant", "content": "\x00"},
         {"role": "user", "content": "describe the dog"}], add_generation_prompt=True, tokenize=False).split("\x00")[1]
    assert second.startswith(first) and second.endswith(after_reply)
    reply = second[len(first):len(second) - len(after_reply)]
    assert reply.strip() and proc.stdout.startswith(reply + "\n")   # what was printed is what was kept
    # After /reset the third prompt is the first one asked about the fish: nothing of the conversation is left.
    assert "(conversation reset)" in proc.stderr
    assert third == first.replace("cat", "fish")
    assert "owl" not in proc.stderr and "Traceback" not in proc.stderr


def test_bad_model_path_is_one_line(tmp_path):
    proc = _chat([str(tmp_path / "missing")], "", cwd=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("chat.py: ")
    assert "Traceback" not in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = _chat([str(tmp_path / "empty")], "", cwd=str(tmp_path))
    assert proc.returncode == 2 and "is not a model directory" in proc.stderr and "Traceback" not in proc.stderr


def test_streamer_prints_each_token_when_it_is_whole(eval_run):
    """Token by token, never half a character, and in the end exactly the decoded response."""
    from transformers import AutoTokenizer

    from rlhf_ds.evaluation.streaming import TokenPrinter

    tok = AutoTokenizer.from_pretrained(os.path.join(eval_run, "sft"))
    ids = tok("the cat is warm, été ☃ and calm.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    out = io.StringIO()
    printer = TokenPrinter(tok, out)
    printer.put(torch.tensor([[5, 6, 7]]))            # the prompt: not printed
    for i in ids:
        printer.put(torch.tensor([i]))
    printer.end()
    assert out.getvalue() == tok.decode(ids, skip_special_tokens=True) + "\n"
    assert len(printer.pieces) >= 8                     # the words came one after another, not at the end
    assert not any("\ufffd" in p for p in printer.pieces)


def test_oldest_exchanges_give_way_to_the_context_limit(eval_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_ds.data.records import Message
    from rlhf_ds.evaluation.chat import ChatSession, Sampling

    path = os.path.join(eval_run, "sft")
    tok = AutoTokenizer.from_pretrained(path)
    session = ChatSession(AutoModelForCausalLM.from_pretrained(path), tok, Sampling(max_new_tokens=4))
    session.history = [Message("user", "describe the cat"), Message("assistant", "the cat is warm."),
                       Message("user", "describe the dog"), Message("assistant", "the dog is kind.")]
    full = session.prompt_ids("describe the fish")
    session.max_context = len(full) + 4 - 1           # one token short: the oldest exchange must go
    kept = tok.decode(session.prompt_ids("describe the fish"))
    assert "cat" not in kept and "describe the dog" in kept and "describe the fish" in kept

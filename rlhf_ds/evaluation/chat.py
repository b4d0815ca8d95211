"""`launch/chat.py`: talk to an exported model in the terminal.

    python launch/chat.py outputs/demo/ppo [--temperature 0.7] [--top_p 0.9] [--max_new_tokens 256]
                          [--system "You are terse."] [--greedy] [--show_prompt]

Each turn is rendered with the model's chat template (the tokenizer's own, else rlhf_ds's plain
one: rlhf_ds/data/chat.py, as in training), so the model sees the format it was trained on. The
reply is printed token by token as it is generated, and kept: the next turn's prompt holds the
whole conversation. When the conversation no longer fits the model's context, its oldest
exchanges are dropped. Commands: /reset (forget the conversation), /exit (or end of input).

Replies go to stdout, each ended by a newline; notices and --show_prompt to stderr, so a
conversation piped through the command leaves only the replies on stdout.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, TextIO

import torch

from ..data.chat import ChatFormatter
from ..data.records import Message
from ..errors import PathNotFoundError, UserError, exit_on_user_error
from .streaming import TokenPrinter

PROG = "chat.py"
COMMANDS = "/reset forgets the conversation, /exit ends it"


@dataclass
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.0
    do_sample: bool = True


class ChatSession:
    """A conversation with one causal LM: history, prompt rendering, streamed replies."""

    def __init__(self, model, tokenizer, sampling: Sampling, system: Optional[str] = None,
                 chat_template: Optional[str] = None, max_context: Optional[int] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.formatter = ChatFormatter(tokenizer, chat_template)
        self.system = [Message("system", system)] if system else []
        self.history: List[Message] = []
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", None)

    def reset(self) -> None:
        self.history = []

    def prompt_ids(self, user_text: str) -> List[int]:
        """The prompt for the next reply: system, history, the new user turn, the generation prompt; the
        oldest exchanges dropped while it leaves no room for `max_new_tokens`."""
        turns = self.history + [Message("user", user_text)]
        while True:
            ids = self.formatter.encode_prompt(self.system + turns)
            if self.max_context is None or len(ids) + self.sampling.max_new_tokens <= self.max_context:
                return ids
            if len(turns) <= 1:       # the new message alone is too long: keep its end
                return ids[-max(1, self.max_context - self.sampling.max_new_tokens):]
            turns = turns[2:]         # one user/assistant exchange

    def _generation_config(self):
        from transformers import GenerationConfig

        s, tok = self.sampling, self.tokenizer
        sample = dict(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k) if s.do_sample else \
            dict(temperature=1.0, top_p=1.0, top_k=0)
        return GenerationConfig(max_new_tokens=s.max_new_tokens, do_sample=s.do_sample,
                                repetition_penalty=s.repetition_penalty, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id, **sample)

    @torch.no_grad()
    def reply(self, user_text: str, stream: Optional[TextIO] = None) -> str:
        """Generate the reply to `user_text`, printed to `stream` as it comes; both turns join the history."""
        ids = torch.tensor([self.prompt_ids(user_text)], device=self.model.device)
        printer = TokenPrinter(self.tokenizer, stream)
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  generation_config=self._generation_config(), streamer=printer)
        text = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)   # as printed
        self.history += [Message("user", user_text), Message("assistant", text)]
        return text


def parser() -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise UserError(f"{message} (see --help)")

    ap = Parser(prog=PROG, description=f"Chat with an exported model ({COMMANDS}).")
    ap.add_argument("model", help="model directory (Hugging Face format with its tokenizer), or a hub id")
    d = Sampling()
    ap.add_argument("--max_new_tokens", type=int, default=d.max_new_tokens)
    ap.add_argument("--temperature", type=float, default=d.temperature)
    ap.add_argument("--top_p", type=float, default=d.top_p)
    ap.add_argument("--top_k", type=int, default=d.top_k, help="0: off")
    ap.add_argument("--repetition_penalty", type=float, default=d.repetition_penalty)
    ap.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    ap.add_argument("--seed", type=int, help="sampling seed (default: a fresh one each run)")
    ap.add_argument("--system", help="a system message put before the conversation")
    ap.add_argument("--chat_template", help="'plain' for rlhf_ds's template, or a Jinja template; default: the "
                    "tokenizer's own")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    ap.add_argument("--show_prompt", action="store_true", help="print each rendered prompt to stderr")
    return ap


def _check(args) -> None:
    if args.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature <= 0:
        raise UserError(f"--temperature must be above 0, got {args.temperature} (use --greedy for greedy)")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top_p must be in (0, 1], got {args.top_p}")


def load(args) -> ChatSession:
    from ..models.loading import is_model_dir, load_causal_lm, load_tokenizer

    if os.path.exists(args.model) and not is_model_dir(args.model):
        raise PathNotFoundError(f"{args.model} is not a model directory (no config.json there)")
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA device")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(
        args.dtype, torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32)
    tok = load_tokenizer(args.model)
    model = load_causal_lm(args.model, dtype, tok).to(device).eval()
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        top_k=args.top_k, repetition_penalty=args.repetition_penalty, do_sample=not args.greedy)
    return ChatSession(model, tok, sampling, args.system, args.chat_template)


def converse(session: ChatSession, lines: TextIO, out: TextIO, err: TextIO, show_prompt: bool = False,
             interactive: bool = False) -> int:
    """Read user turns from `lines` until /exit or the end; returns the number of replies."""
    replies = 0
    while True:
        if interactive:
            out.write("you> ")
            out.flush()
        line = lines.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            session.reset()
            err.write("(conversation reset)\n")
            continue
        if text.startswith("/"):
            err.write(f"unknown command {text.split()[0]}: {COMMANDS}\n")
            continue
        if show_prompt:
            prompt = session.tokenizer.decode(session.prompt_ids(text))
            err.write(f"--- prompt ---\n{prompt}\n--- end of prompt ---\n")
            err.flush()
        session.reply(text, out)
        replies += 1
    return replies


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    with exit_on_user_error(PROG):
        args = parser().parse_args(argv)
        _check(args)
        session = load(args)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    interactive = sys.stdin.isatty()
    if interactive:
        sys.stderr.write(f"chatting with {args.model} ({COMMANDS})\n")
    try:
        converse(session, sys.stdin, sys.stdout, sys.stderr, args.show_prompt, interactive)
    except KeyboardInterrupt:
        sys.stderr.write("\n")

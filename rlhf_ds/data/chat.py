"""Chat templates: messages -> text -> token segments, with the trained-on spans marked.

Which template: the tokenizer's own `tokenizer.chat_template` when it has one, else
ours, `PLAIN_CHAT_TEMPLATE`, a plain role-marker format (markers are ordinary text,
no new tokens):

    <|system|>
    You are helpful.
    <|user|>
    Hi!
    <|assistant|>
    Hello.</s>
    <|user|>
    Bye.
    <|assistant|>
                       <- the generation prompt ends here ("<|assistant|>\\n")

Turns are separated by one newline; every assistant turn ends with the tokenizer's
EOS token (when it has one), so a model learns to stop. `chat_template="plain"`
forces ours, any other string is used as a Jinja template.

Which tokens are trained on: every assistant turn at or after `target_from`,
found by rendering prefixes of the conversation: the turn starts where
`render(messages[:i], add_generation_prompt=True)` ends and stops where
`render(messages[:i+1])` ends, less trailing whitespace (a newline after an
end-of-turn marker is not something to learn). So the span covers the content and
the template's own end-of-turn marker. The template must render prefixes as
prefixes of the whole conversation, which all common templates do; one that
does not is an error naming the turn.

Segments are tokenized one by one (never across a span boundary), exactly as at
generation time, when the prompt is tokenized alone and the model emits the rest.
The tokenizer's BOS is put first when plain encoding would add it and the template
did not write it. The last trained span ends with EOS: it is appended when the
template did not end the turn with it.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

from rlhf_ds.data.records import Message

PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{% if messages %}{{ '\\n' }}{% endif %}{{ '<|assistant|>\\n' }}"
    "{% endif %}"
)


class ChatTemplateError(ValueError):
    """The chat template cannot be used to find the trained-on spans."""


@dataclasses.dataclass
class Segment:
    ids: List[int]
    target: bool          # trained on (an assistant turn at or after target_from)


def resolve_template(tokenizer, chat_template: Optional[str] = None) -> str:
    """The Jinja template to use: `chat_template` if given ("plain" = ours), else the
    tokenizer's own, else ours."""
    if chat_template == "plain":
        return PLAIN_CHAT_TEMPLATE
    if chat_template:
        return chat_template
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):          # several named templates: the default one
        own = own.get("default")
    return own if isinstance(own, str) and own.strip() else PLAIN_CHAT_TEMPLATE


def _leading_special_ids(tokenizer) -> List[int]:
    """Token ids the tokenizer puts before the text on plain encoding (e.g. Llama's BOS)."""
    probe = "a b"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return list(full[:i])
    return []


class ChatFormatter:
    """Renders and tokenizes conversations for one tokenizer and template."""

    def __init__(self, tokenizer, chat_template: Optional[str] = None):
        self.tokenizer = tokenizer
        self.template = resolve_template(tokenizer, chat_template)
        self.uses_plain_template = self.template == PLAIN_CHAT_TEMPLATE
        # For reports: "plain" (ours), "tokenizer" (its own) or "custom" (passed in).
        self.template_source = ("plain" if self.uses_plain_template
                                else "custom" if chat_template else "tokenizer")
        self.bos_ids = _leading_special_ids(tokenizer)
        self.eos_id = tokenizer.eos_token_id

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            [m.as_dict() for m in messages], chat_template=self.template, tokenize=False,
            add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> List[int]:
        # The template wrote any special tokens it wants; don't let the tokenizer add more.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _with_bos(self, ids: List[int]) -> List[int]:
        n = len(self.bos_ids)
        return ids if not n or ids[:n] == self.bos_ids else self.bos_ids + ids

    def prompt_text(self, messages: Sequence[Message]) -> str:
        """The rendered prompt, ending with the generation prompt."""
        return self.render(messages, add_generation_prompt=True)

    def encode_prompt(self, messages: Sequence[Message]) -> List[int]:
        """Token ids of the prompt with the generation prompt (what generation starts from)."""
        return self.encode_prompt_text(self.prompt_text(messages))

    def encode_prompt_text(self, text: str) -> List[int]:
        """`encode_prompt` for a prompt already rendered by `prompt_text`."""
        return self._with_bos(self.encode(text))

    def segments(self, messages: Sequence[Message], target_from: int = 0) -> List[Segment]:
        """The conversation as alternating non-target / target segments. Assistant turns
        with index >= `target_from` are targets; the last target ends with EOS."""
        messages = list(messages)
        full = self.render(messages)
        spans = []
        for i, m in enumerate(messages):
            if i < target_from or m.role != "assistant":
                continue
            before = self.render(messages[:i], add_generation_prompt=True)
            after = self.render(messages[:i + 1])
            if not (full.startswith(before) and full.startswith(after) and len(after) >= len(before)):
                raise ChatTemplateError(
                    f"the chat template does not render message {i} ({m.role}) as a prefix of the "
                    "whole conversation, so its span cannot be found; use chat_template='plain' "
                    "or a prefix-stable template")
            start = len(before)
            end = max(start, len(after.rstrip()))
            if spans and start < spans[-1][1]:
                raise ChatTemplateError(f"assistant message {i} overlaps the previous one in the template")
            spans.append((start, end))
        if not spans:
            raise ChatTemplateError("no assistant message to train on")

        pieces, pos = [], 0
        for start, end in spans:
            if start > pos:
                pieces.append((full[pos:start], False))
            pieces.append((full[start:end], True))
            pos = end
        tail = full[pos:]
        if tail.strip():               # text after the last target that is not whitespace
            pieces.append((tail, False))

        segments = [Segment(self.encode(text), target) for text, target in pieces]
        segments[0].ids = self._with_bos(segments[0].ids)
        last = max(i for i, s in enumerate(segments) if s.target)
        if self.eos_id is not None and segments[last].ids[-1:] != [self.eos_id]:
            segments[last].ids.append(self.eos_id)
        return segments

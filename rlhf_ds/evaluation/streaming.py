"""Print a response token by token while `generate` produces it.

transformers' TextStreamer writes only to stdout and holds text back until a word ends; this one
writes to any stream and prints every token as soon as it decodes to whole characters. Decoding
the whole response each time (not token by token) keeps the spaces and multi-byte characters that
a token split across; a trailing U+FFFD (half a UTF-8 character) waits for the next token.
"""
from __future__ import annotations

import sys
from typing import List, Optional, TextIO

from transformers.generation.streamers import BaseStreamer


class TokenPrinter(BaseStreamer):
    """A `generate(..., streamer=...)` streamer for one sequence: skips the prompt, prints the rest."""

    def __init__(self, tokenizer, stream: Optional[TextIO] = None):
        self.tokenizer = tokenizer
        self.stream = stream
        self.ids: List[int] = []
        self.printed = 0            # characters of the decoded response already written
        self._prompt_pending = True
        self.pieces: List[str] = []  # what each write was (tests check that output was incremental)

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    def put(self, value) -> None:
        if value.dim() > 1:
            if value.shape[0] != 1:
                raise ValueError("TokenPrinter streams one sequence at a time")
            value = value[0]
        if self._prompt_pending:       # generate's first call hands over the prompt
            self._prompt_pending = False
            return
        self.ids.extend(value.tolist())
        self._write(self.tokenizer.decode(self.ids, skip_special_tokens=True).rstrip("\ufffd"))

    def end(self) -> None:
        self._write(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        self._out().write("\n")
        self._out().flush()

    def _write(self, text: str) -> None:
        new = text[self.printed:]
        if new:
            self._out().write(new)
            self._out().flush()
            self.pieces.append(new)
            self.printed = len(text)

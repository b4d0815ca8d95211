"""Rewards from an HTTP endpoint: the batch goes out as JSON, the rewards come back as JSON.

Request (POST, `Content-Type: application/json`), one per chunk of at most `chunk_size` rows:

    {"prompts": [...], "completions": [...], "<column>": [...], ...}

the same arguments a reward function gets (see function.py): prompts and completions aligned,
and every other column of the prompt records as a list. Answer (status 200):

    {"rewards": [0.5, null, 1.0, ...]}        or the bare list [0.5, null, 1.0, ...]

one number (or null: "does not apply") per completion of the request.

At most `max_in_flight` requests are open at once. A request that times out, cannot connect, or
gets 408, 429 or a 5xx status is sent again, up to `retries` more times, waiting `backoff_s`,
then twice as long each time (exponential backoff). Any other status, an answer that is not
JSON, or one with bad values stops the run at once: the server answered, and asking again
would get the same answer. Only the standard library is used (urllib, threads).
"""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Dict, List

import torch

from .base import RewardBatch, RewardSourceError, SourceScores
from .values import scores_from_values

RETRY_STATUS = (408, 429, 500, 502, 503, 504)
_BODY_SNIPPET = 200


class _Retryable(Exception):
    """A failure worth another attempt (the server may answer next time)."""


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays (from parquet or csv columns) have .tolist(); anything else is an error.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _snippet(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return repr(text[:_BODY_SNIPPET] + ("..." if len(text) > _BODY_SNIPPET else ""))


@dataclass
class HTTPSource:
    """A `RewardSource` that POSTs each batch, in chunks, to `url` (see the module docstring)."""
    name: str
    url: str
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 0.5
    max_in_flight: int = 4
    chunk_size: int = 64

    def _payload(self, batch: RewardBatch, lo: int, hi: int) -> bytes:
        body: Dict[str, Any] = {"prompts": batch.prompts[lo:hi], "completions": batch.completions[lo:hi]}
        for column, values in batch.columns.items():
            if column not in body:
                body[column] = values[lo:hi]
        try:
            return json.dumps(body, default=_json_default).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise RewardSourceError(self.name, f"rows {lo}-{hi - 1} cannot be sent as JSON: {e}", lo) from None

    def _post_once(self, data: bytes) -> bytes:
        request = urllib.request.Request(self.url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            body = e.read()
            message = f"HTTP {e.code} {e.reason}: {_snippet(body)}"
            if e.code in RETRY_STATUS:
                raise _Retryable(message) from None
            raise RewardSourceError(self.name, f"POST {self.url} answered {message}") from None
        except (socket.timeout, TimeoutError):
            raise _Retryable(f"no answer within timeout_s={self.timeout_s:g} s") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise _Retryable(f"no answer within timeout_s={self.timeout_s:g} s") from None
            raise _Retryable(f"cannot connect: {reason}") from None
        except (ConnectionError, OSError) as e:   # reset or closed mid-answer
            raise _Retryable(f"connection failed: {e}") from None

    def _post(self, data: bytes, lo: int, hi: int) -> bytes:
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                return self._post_once(data)
            except _Retryable as e:
                if attempt + 1 == attempts:
                    raise RewardSourceError(
                        self.name, f"POST {self.url} for rows {lo}-{hi - 1} failed {attempts} time(s), the last: "
                        f"{e} (raise rewards.sources[].retries or timeout_s if the server is slow)", lo) from None
                time.sleep(self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")

    def _chunk(self, batch: RewardBatch, lo: int, hi: int) -> List[Any]:
        body = self._post(self._payload(batch, lo, hi), lo, hi)
        try:
            answer = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RewardSourceError(self.name, f"POST {self.url} for rows {lo}-{hi - 1}: the answer is not JSON "
                                    f"({e}): {_snippet(body)}", lo) from None
        if isinstance(answer, dict):
            if "rewards" not in answer:
                raise RewardSourceError(self.name, f"POST {self.url} for rows {lo}-{hi - 1}: the answer has no "
                                        f"'rewards' (keys: {', '.join(map(str, answer)) or 'none'})", lo)
            answer = answer["rewards"]
        if not isinstance(answer, list) or len(answer) != hi - lo:
            got = f"{len(answer)} values" if isinstance(answer, list) else f"a {type(answer).__name__}"
            raise RewardSourceError(self.name, f"POST {self.url} for rows {lo}-{hi - 1}: the answer holds {got} for "
                                    f"{hi - lo} completions; expected a list of one number (or null) each", lo)
        return answer

    def __call__(self, batch: RewardBatch) -> SourceScores:
        if len(batch) == 0:
            return SourceScores.everywhere(torch.zeros(0))
        bounds = [(lo, min(lo + self.chunk_size, len(batch))) for lo in range(0, len(batch), self.chunk_size)]
        answers: List[Any] = [None] * len(bounds)
        with ThreadPoolExecutor(max_workers=min(self.max_in_flight, len(bounds))) as pool:
            futures = {pool.submit(self._chunk, batch, lo, hi): i for i, (lo, hi) in enumerate(bounds)}
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:          # a failed chunk stops the run: do not send the rest
                f.cancel()
            failed = [f for f in done if f.exception() is not None]
            if failed:
                raise min(failed, key=futures.get).exception()
            for f, i in futures.items():
                answers[i] = f.result()
        # Checked as one list, so that an error names the row's index in the whole batch.
        return scores_from_values(self.name, [v for answer in answers for v in answer], batch)

"""The provider's prompt caching, modelled in one place (OpenAI's rules).

Used by the batch dry run (``agent.batch.runner.dry_run``: how many prompt tokens a run can
expect to be billed at the cached price) and by the loopback test server
(``agent.testing.loopback``, ``prompt_cache=``), so what the estimate assumes and what the test
server reports are the same rules, token for token.

The rules, from OpenAI's prompt-caching guide (platform.openai.com/docs/guides/prompt-caching):

* Caching is automatic and applies only to prompts of at least ``MIN_TOKENS`` (1,024) tokens.
* A hit is the longest **exact prefix** of the prompt that an earlier request processed; the
  cached part is counted in steps of ``INCREMENT`` (128) tokens above the first 1,024
  (1,024, 1,152, 1,280, ...), so a hit needs at least 1,024 identical leading tokens.
* The structured-output schema "serves as a prefix to the system message": a request whose
  ``response_format`` differs from another's shares no prefix with it. This model treats the
  whole ``response_format`` (and ``tools``) as a key that must be equal
  (``CachePolicy.schema_in_prefix``); where two schemas differ only after their beginning the
  real provider could still match a few hundred schema tokens, never the messages after them.
* Entries live for minutes (5-10 of inactivity, at most an hour), so only prefixes sent
  earlier in the same run count, and only once their request has been processed: a later
  request must be sent after the earlier one's reply (the batch runner sequences a user's
  tasks for this, ``agent.batch.runner``).

The token sequence of a request (``prompt_tokens_of``) is the model's encoding of each
message's role and content with the chat format's framing tokens between them (the same
constants as ``agent.prompting.tokens.count_messages``, whose total it equals), so common
prefixes are measured in real tokens.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.prompting.tokens import TOKENS_PER_MESSAGE, TOKENS_PER_NAME, TOKENS_REPLY_PRIMING, encoding_for

MIN_TOKENS = 1024
"""Prompts shorter than this are never cached; a cached prefix is at least this long."""
INCREMENT = 128
"""Cached prefixes grow in steps of this many tokens above ``MIN_TOKENS``."""

# Framing tokens stand for the chat format's special tokens (<|start|>, <|message|>, <|end|>):
# values no encoding produces, so they only ever match each other.
_START, _SEP, _END, _NAME = -1, -2, -3, -4


@dataclass(frozen=True)
class CachePolicy:
    """A provider's caching rules (see the module docstring); ``OPENAI`` is the default."""

    min_tokens: int = MIN_TOKENS
    increment: int = INCREMENT
    schema_in_prefix: bool = True
    """The response schema (and tools) are part of the cached prefix, as OpenAI documents:
    requests with different schemas share nothing. False treats the schema as not part of
    the prompt (what a request-independent schema would allow)."""

    def cacheable(self, common: int, prompt_tokens: int) -> int:
        """Tokens billed as cached when ``common`` leading tokens were processed before."""
        common = min(common, prompt_tokens)
        if prompt_tokens < self.min_tokens or common < self.min_tokens:
            return 0
        return self.min_tokens + (common - self.min_tokens) // self.increment * self.increment

    def key(self, body: Mapping[str, Any]) -> str:
        """What must be equal for two requests to share a prefix: the model and, under
        ``schema_in_prefix``, the response format and tools."""
        parts: dict[str, Any] = {"model": body.get("model")}
        if self.schema_in_prefix:
            parts["response_format"] = body.get("response_format")
            parts["tools"] = body.get("tools")
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


OPENAI = CachePolicy()


def prompt_tokens_of(messages: Sequence[Mapping[str, Any]], model: str) -> list[int]:
    """The request's prompt as tokens: per message the framing, role, name and content tokens,
    then the reply priming. ``len`` equals ``count_messages(messages, model)``."""
    encoding = encoding_for(model)
    out: list[int] = []
    for message in messages:
        out.append(_START)
        out.extend([_SEP] * (TOKENS_PER_MESSAGE - 2))
        for key, value in message.items():
            if isinstance(value, str):
                out.extend(encoding.encode(value, disallowed_special=()))
            if key == "name":
                out.extend([_NAME] * TOKENS_PER_NAME)
        out.append(_END)
    out.extend([_START] + [_SEP] * (TOKENS_REPLY_PRIMING - 1))
    return out


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        mid = (low + high) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid
    return low


class PrefixCache:
    """Prefixes a server has processed, for reporting ``cached_tokens`` (the loopback server).

    Keeps a hash of every prefix at a length the policy can bill (1,024, 1,152, ...), per
    policy key, least recently used first out beyond ``max_entries``: a request's cached
    tokens are the longest such prefix seen before. Thread-safe.
    """

    def __init__(self, policy: CachePolicy = OPENAI, *, max_entries: int = 200_000) -> None:
        self.policy = policy
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def serve(self, body: Mapping[str, Any], model: str) -> tuple[int, int]:
        """(prompt tokens, cached tokens) of a request, which is remembered from now on."""
        tokens = prompt_tokens_of(body.get("messages") or [], model)
        total = len(tokens)
        if total < self.policy.min_tokens:
            return total, 0
        digest = hashlib.sha256(self.policy.key(body).encode())
        marks: list[tuple[int, bytes]] = []
        done = 0
        for length in range(self.policy.min_tokens, total + 1, self.policy.increment):
            digest.update(json.dumps(tokens[done:length]).encode())
            done = length
            marks.append((length, digest.copy().digest()))
        cached = 0
        with self._lock:
            for length, mark in marks:
                if mark in self._seen:
                    cached = length
                    self._seen.move_to_end(mark)
                else:
                    self._seen[mark] = None
            while len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
        return total, cached

"""Every error recagent raises, under one base class.

Each subclass mirrors one failure cause and carries the data needed to debug it
(file/column/row for data, attempts/last reply/usage for the model). The CLI turns
any ``RecommenderError`` into one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.secrets import redact


class RecommenderError(Exception):
    """Base class of every error recagent raises on purpose."""

    exit_code: int = 1


class ConfigError(RecommenderError):
    """A setting is missing or invalid (model, base URL, price table, template dir...)."""

    exit_code = 2


class InvalidArgumentError(ConfigError, ValueError):
    """An argument of a library call is out of its documented range (k, a count...).

    A ``ValueError`` too, so callers that caught ``ValueError`` keep working."""


class DataError(RecommenderError):
    """Input data cannot be used: unreadable file, missing column, bad values.

    ``file``, ``column`` and ``row`` locate the problem where known (row is 1-based
    as a user sees it in the file, header excluded).
    """

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: int | None = None,
    ) -> None:
        self.file = file
        self.column = column
        self.row = row
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file else "",
                f"column {column!r}" if column else "",
                f"row {row}" if row is not None else "",
            )
            if part
        )
        super().__init__(f"{message} ({where})" if where else message)


class UnknownUserError(DataError):
    """The requested user has no events in the loaded log."""


class UnknownItemError(DataError):
    """An item id is not in the catalog."""


class DirectoryInUseError(ConfigError):
    """Another recagent process holds the batch output directory (a second run would pay twice)."""


class TemplateError(RecommenderError):
    """A prompt template is missing, fails to render, or got invalid inputs."""

    exit_code = 4


@dataclass
class Usage:
    """Token usage and cost, summed over every attempt (failed ones included)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    requests: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens
        self.cost_usd += other.cost_usd
        self.requests += other.requests

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> Usage:
        """The usage ``as_dict`` wrote (a result's ``usage``); other keys are ignored."""
        return cls(**{name: fields[name] for name in cls.__dataclass_fields__ if name in fields})

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "requests": self.requests,
        }


class ModelError(RecommenderError):
    """The chat API could not produce a usable reply.

    Carries ``attempts`` (requests sent, retries and re-asks included), ``last_reply``
    (raw text of the last completion, if any) and ``usage`` (tokens and cost of all
    attempts) so a caller can log and account for the failure.
    """

    exit_code = 5

    def __init__(
        self,
        message: str,
        *,
        attempts: int = 0,
        last_reply: str | None = None,
        usage: Usage | None = None,
        template: str | None = None,
    ) -> None:
        self.attempts = attempts
        # Servers echo keys in errors and replies; what an error carries ends up in failure
        # files, ledgers and on stderr, so it never holds one (see agent.secrets).
        self.last_reply = redact(last_reply) if last_reply is not None else None
        self.usage = usage or Usage()
        self.template = template
        super().__init__(redact(message))


class TransportError(ModelError):
    """Network failure, timeout or 5xx/429 that persisted after the bounded retries."""


class RateLimitError(TransportError):
    """HTTP 429 (rate limit) that persisted after the bounded retries."""


class QuotaExceededError(ModelError):
    """HTTP 429 ``insufficient_quota``: the account is out of credit. Never retried."""


class AuthenticationError(ModelError):
    """HTTP 401/403: the API key is missing or wrong. Never retried."""


class BadRequestError(ModelError):
    """HTTP 400/404/422: the server rejected the request. Never retried."""


class TruncatedReplyError(ModelError):
    """``finish_reason == "length"``: the reply hit max tokens. Not re-asked (it would truncate again)."""


class RefusalError(ModelError):
    """The model refused, or the provider's content filter stopped the reply."""


class InvalidReplyError(ModelError):
    """The reply stayed invalid (bad JSON or schema violation) after the bounded re-asks."""


class CassetteMissError(ModelError):
    """Replay mode got a request that is not in the cassette."""


class BudgetExceededError(RecommenderError):
    """The next call would pass the configured cost budget."""

    exit_code = 6


class MetricInputError(RecommenderError, ValueError):
    """Invalid metric arguments: k < 1, duplicate ids in a ranking, empty relevant set where not allowed."""


# -- feedback loop and profile store (agent.profiles.feedback, agent.profiles.refine, agent.profiles.store) -------------
class InvalidFeedbackError(DataError):
    """A feedback event is malformed: rating without a value or off the scale, comment without text..."""


class UnknownRecommendationError(DataError):
    """Feedback names a recommendation id that was never served, was served to another user,
    or did not include the item."""


class ProfileNotFoundError(DataError):
    """The store has no profile (or not the requested version) for the user."""


class StoreError(RecommenderError):
    """The profile store cannot be opened, migrated or written (path, permissions, newer schema)."""

    exit_code = 7


class LedgerError(StoreError):
    """A batch ledger or its output files cannot be read or written (disk full, I/O error,
    corrupt file). What was committed before stays; re-run once the disk is fixed."""


class VersionConflictError(StoreError):
    """Another writer saved a newer profile version first, and the retries ran out.

    ``user_id`` and ``attempts`` say whose profile and how many optimistic writes were tried.
    """

    def __init__(self, message: str, *, user_id: str, attempts: int) -> None:
        self.user_id = user_id
        self.attempts = attempts
        super().__init__(message)

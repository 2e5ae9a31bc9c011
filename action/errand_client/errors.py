"""What can go wrong when asking Errand for a token, split the way a caller must react.

- `TokenRequestError`: the broker (or the identity provider) said no with a terminal error
  (RFC 6749 §5.2 `invalid_request`, `invalid_grant`, `invalid_target`, `invalid_scope`,
  `invalid_client`, …). Retrying the same request cannot help; fix the request or the trust
  configuration.
- `RetriesExhausted`: every attempt met a retryable condition (503 `temporarily_unavailable`
  or a connection error) and the retry budget ran out.
- `SubjectTokenError`: no workload-identity token could be obtained (for example the GitHub
  Actions request variables are missing). Errand never falls back to a static secret.

No message or repr here ever carries a token: only OAuth error codes, descriptions the
broker chose to show, task ids and HTTP statuses."""

from __future__ import annotations


class ErrandError(Exception):
    """Base class for every error the client raises."""


class TokenRequestError(ErrandError):
    """A terminal error answer (4xx, or any non-503 failure): do not retry."""

    def __init__(self, error: str, description: str = "", *, status: int | None = None) -> None:
        self.error = error
        self.description = description
        self.status = status
        text = f"{error}: {description}" if description else error
        super().__init__(f"{text} (HTTP {status})" if status else text)


class RetriesExhausted(ErrandError):
    """Every attempt failed with a retryable condition; `last` says what the last one was."""

    def __init__(self, attempts: int, last: str) -> None:
        self.attempts = attempts
        self.last = last
        super().__init__(f"gave up after {attempts} attempt(s): {last}")


class SubjectTokenError(ErrandError):
    """The workload-identity (subject) token could not be obtained."""


class CompletionError(ErrandError):
    """The task could not be completed; its tokens stay valid until they expire."""

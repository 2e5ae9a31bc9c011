"""Errand's client side: a Python library, the CI commands and the GitHub Action's engine.

Depends on `requests` only (`cryptography` and PyJWT for AgentKey); never on the broker."""

from errand_client.assertions import AgentKey
from errand_client.client import ErrandClient, IssuedToken, TaskToken, new_task_id, refresh_margin
from errand_client.errors import (
    CompletionError,
    ErrandError,
    RetriesExhausted,
    SubjectTokenError,
    TokenRequestError,
)
from errand_client.providers import env_provider, file_provider, github_actions_provider
from errand_client.retry import RetryPolicy

__all__ = [
    "AgentKey",
    "CompletionError",
    "ErrandClient",
    "ErrandError",
    "IssuedToken",
    "RetriesExhausted",
    "RetryPolicy",
    "SubjectTokenError",
    "TaskToken",
    "TokenRequestError",
    "env_provider",
    "file_provider",
    "github_actions_provider",
    "new_task_id",
    "refresh_margin",
]

"""Errand: just-in-time, task-scoped credentials for non-human identities."""

from broker.app import create_app

__all__ = ["create_app"]

"""Errand: just-in-time, task-scoped credentials for non-human identities.

The package imports nothing itself, so `import broker.domain.models` loads no web framework:
the application factory is `broker.app.create_app`."""

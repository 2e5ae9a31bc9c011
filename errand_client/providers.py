"""Subject-token providers: callables that return a FRESH workload-identity JWT per call.

A provider is called once per exchange attempt, so a retried exchange never re-sends a
token whose single-use `jti` the broker may already have seen.

- `github_actions_provider(audience)`: asks the GitHub Actions runner's token service
  (`ACTIONS_ID_TOKEN_REQUEST_URL` / `_TOKEN`, present when the job has
  `permissions: id-token: write`).
- `env_provider(name)`: reads a variable, e.g. one GitLab fills from the job's `id_tokens:`.
- `file_provider(path)`: reads a file each time, e.g. a Kubernetes projected service-account
  token or a SPIFFE JWT-SVID that a sidecar rotates in place.
- `errand_client.assertions.AgentKey`: signs a fresh assertion with an agent's own key.

Providers never print, log or put a token in an exception."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import quote

import requests

from errand_client.errors import SubjectTokenError
from errand_client.retry import Retryable

SubjectTokenProvider = Callable[[], str]

REQUEST_URL_VAR = "ACTIONS_ID_TOKEN_REQUEST_URL"
REQUEST_TOKEN_VAR = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"
MAX_TOKEN_CHARS = 16384  # the broker's own limit on any form parameter
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class MissingOIDCEnvironment(SubjectTokenError):
    """The GitHub Actions token-request variables are absent."""

    def __init__(self, missing: list[str]) -> None:
        names = " and ".join(missing)
        super().__init__(
            f"cannot request a GitHub Actions OIDC token: {names} "
            f"{'is' if len(missing) == 1 else 'are'} not set. The usual causes: (1) the "
            "workflow or job lacks `permissions: id-token: write`; (2) the run is a pull "
            "request from a fork, which GitHub never gives an OIDC token. Errand does not "
            "fall back to a static secret."
        )


def _check_shape(token: str, source: str) -> str:
    token = token.strip()
    if not token:
        raise SubjectTokenError(f"{source} is empty")
    if len(token) > MAX_TOKEN_CHARS or not _JWT_SHAPE.fullmatch(token):
        raise SubjectTokenError(f"{source} does not hold a compact JWT")
    return token


class GitHubActionsProvider:
    """Fetches the job's OIDC token for `audience` on every call."""

    def __init__(
        self,
        audience: str,
        *,
        environ: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        session: requests.Session | None = None,
    ) -> None:
        if not audience:
            raise SubjectTokenError(
                "the OIDC audience is required: the `aud` your Errand issuer configuration expects"
            )
        env = os.environ if environ is None else environ
        missing = [name for name in (REQUEST_URL_VAR, REQUEST_TOKEN_VAR) if not env.get(name)]
        if missing:
            raise MissingOIDCEnvironment(missing)
        self.audience = audience
        self._url = env[REQUEST_URL_VAR]
        self._request_token = env[REQUEST_TOKEN_VAR]
        self._timeout = timeout
        self._session = session or requests.Session()

    def __repr__(self) -> str:
        return f"GitHubActionsProvider(audience={self.audience!r})"

    def __call__(self) -> str:
        sep = "&" if "?" in self._url else "?"
        url = f"{self._url}{sep}audience={quote(self.audience, safe='')}"
        try:
            resp = self._session.get(
                url,
                headers={
                    "Authorization": f"bearer {self._request_token}",
                    "Accept": "application/json",
                },
                timeout=(self._timeout, self._timeout),
                allow_redirects=False,
            )
        except (requests.ConnectionError, requests.Timeout) as err:
            raise Retryable(
                f"cannot reach the GitHub Actions token service ({type(err).__name__})"
            ) from None
        except requests.RequestException as err:
            raise SubjectTokenError(
                f"cannot request a GitHub Actions OIDC token ({type(err).__name__})"
            ) from None
        if resp.status_code >= 500 or resp.status_code == 429:
            raise Retryable(f"the GitHub Actions token service answered HTTP {resp.status_code}")
        if resp.status_code != 200:
            raise SubjectTokenError(
                f"the GitHub Actions token service refused the request (HTTP {resp.status_code}); "
                "check `permissions: id-token: write`"
            )
        try:
            value = resp.json()["value"]
        except (ValueError, KeyError, TypeError):
            raise SubjectTokenError(
                "the GitHub Actions token service sent an unreadable answer"
            ) from None
        if not isinstance(value, str):
            raise SubjectTokenError("the GitHub Actions token service sent an unreadable answer")
        return _check_shape(value, "the GitHub Actions OIDC token")


def github_actions_provider(
    audience: str, *, environ: Mapping[str, str] | None = None, timeout: float = 5.0
) -> GitHubActionsProvider:
    """A provider for GitHub Actions jobs with `permissions: id-token: write`."""
    return GitHubActionsProvider(audience, environ=environ, timeout=timeout)


class EnvProvider:
    def __init__(
        self, name: str, *, environ: Mapping[str, str] | None = None, hint: str = ""
    ) -> None:
        if not _ENV_NAME.fullmatch(name):
            raise SubjectTokenError(f"{name[:64]!r} is not a valid environment variable name")
        self.name = name
        self._environ = environ
        self._hint = hint

    def __repr__(self) -> str:
        return f"EnvProvider(name={self.name!r})"

    def __call__(self) -> str:
        env = os.environ if self._environ is None else self._environ
        value = env.get(self.name)
        if not value:
            raise SubjectTokenError(f"${self.name} is not set{self._hint}")
        return _check_shape(value, f"${self.name}")


def env_provider(name: str, *, environ: Mapping[str, str] | None = None) -> EnvProvider:
    """Read the token from an environment variable, e.g. GitLab's `id_tokens:`."""
    hint = (
        f": declare it in the job, `id_tokens: {{{name}: {{aud: <the audience Errand expects>}}}}`"
        " (GitLab CI/CD OIDC)"
    )
    return EnvProvider(name, environ=environ, hint=hint)


class FileProvider:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileProvider(path={str(self.path)!r})"

    def __call__(self) -> str:
        # Read on every call: kubelet and SPIRE rotate these files in place.
        try:
            with self.path.open("r", encoding="ascii") as fh:
                text = fh.read(MAX_TOKEN_CHARS + 2)
        except (OSError, UnicodeDecodeError) as err:
            raise SubjectTokenError(
                f"cannot read a token from {self.path} ({type(err).__name__})"
            ) from None
        return _check_shape(text, str(self.path))


def file_provider(path: str | os.PathLike[str]) -> FileProvider:
    """Read the token from a file each time (Kubernetes projected tokens, SPIFFE JWT-SVIDs)."""
    return FileProvider(path)

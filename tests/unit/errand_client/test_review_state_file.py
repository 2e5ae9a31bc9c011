"""`errand complete` trusts only its own state: a state file or token file in a shared temporary
folder that another user owns, opened up or planted as a symlink is refused; the broker URL
never comes from the state; only files `errand exchange` itself created are ever removed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from errand_client import ci
from errand_client.runner import default_state_path
from tests.support.fake_broker import FakeBroker

pytestmark = pytest.mark.regression
AUD = "https://deploy.acme.example"


@pytest.fixture
def elsewhere() -> Iterator[FakeBroker]:
    """A second broker: where a tampered state would send the token."""
    server = FakeBroker().start()
    yield server
    server.stop()


def exchange_to_file(broker, env, sleeps, ctx_factory) -> Path:  # type: ignore[no-untyped-def]
    argv = [
        "exchange",
        f"--url={broker.url}",
        "--audience-for-oidc=errand-ci",
        f"--audience={AUD}",
        "--output=file",
    ]
    ctx = ctx_factory(env, sleeps, split=True)
    assert ci.main(argv, ctx) == 0, ctx.err.getvalue()
    return Path(ctx.out.getvalue().strip())


def complete(env, sleeps, ctx_factory, *argv: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    ctx = ctx_factory(env, sleeps)
    return ci.main(["complete", *argv], ctx), ctx.out.getvalue()


def state_of(env: dict[str, str]) -> Path:
    return default_state_path(env, "ERRAND_TOKEN")


def edit_state(path: Path, **changes: object) -> None:
    """Rewrite the state as its owner could (same file, same mode)."""
    state = json.loads(path.read_text())
    state.update(changes)
    with path.open("w", encoding="utf-8") as fh:  # in place: the mode stays 0600
        json.dump(state, fh)


def test_state_file_owned_by_another_user_is_refused(
    broker, gha_env, sleeps, ctx_factory, monkeypatch
) -> None:
    token_file = exchange_to_file(broker, gha_env, sleeps, ctx_factory)
    state = state_of(gha_env)
    real_uid = os.getuid()
    with monkeypatch.context() as m:
        m.setattr(os, "getuid", lambda: real_uid + 1)  # the files now belong to someone else
        code, text = complete(
            gha_env, sleeps, ctx_factory, f"--url={broker.url}", f"--state-file={state}"
        )
    assert code == 2
    assert "refusing the state file" in text and "owned by" in text
    assert broker.complete_requests == []  # nothing it names was read, nothing was sent
    assert state.exists() and token_file.exists()  # and nothing it names was removed


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602], ids=["0666", "0620", "0602"])
def test_group_or_world_writable_state_file_is_refused(
    broker, gha_env, sleeps, ctx_factory, mode
) -> None:
    token_file = exchange_to_file(broker, gha_env, sleeps, ctx_factory)
    state = state_of(gha_env)
    state.chmod(mode)
    code, text = complete(gha_env, sleeps, ctx_factory, f"--url={broker.url}")
    assert code == 2
    assert "refusing the state file" in text and "writable by" in text
    assert broker.complete_requests == []
    assert state.exists() and token_file.exists()


def test_symlinked_state_file_is_refused(broker, gha_env, sleeps, ctx_factory, tmp_path) -> None:
    token_file = exchange_to_file(broker, gha_env, sleeps, ctx_factory)
    state = state_of(gha_env)
    planted = tmp_path / "planted.json"
    state.rename(planted)
    state.symlink_to(planted)
    code, text = complete(gha_env, sleeps, ctx_factory, f"--url={broker.url}")
    assert code == 2
    assert "refusing the state file" in text and "symbolic link" in text
    assert broker.complete_requests == []
    assert state.is_symlink() and planted.exists() and token_file.exists()


def test_state_url_is_never_used_without_a_configured_url(
    broker, elsewhere, gha_env, sleeps, ctx_factory
) -> None:
    token_file = exchange_to_file(broker, gha_env, sleeps, ctx_factory)
    edit_state(state_of(gha_env), url=elsewhere.url)
    code, text = complete(gha_env, sleeps, ctx_factory)
    assert code == 2 and "--url (or $ERRAND_URL) is required" in text
    assert elsewhere.complete_requests == [] and broker.complete_requests == []
    # Nothing was spent: the state and the token stay for a retry with --url.
    assert state_of(gha_env).exists() and token_file.exists()


def test_state_url_pointing_elsewhere_goes_to_the_configured_url_only(
    broker, elsewhere, gha_env, sleeps, ctx_factory
) -> None:
    exchange_to_file(broker, gha_env, sleeps, ctx_factory)
    edit_state(state_of(gha_env), url=elsewhere.url)
    gha_env["ERRAND_URL"] = broker.url
    code, _ = complete(gha_env, sleeps, ctx_factory)
    assert code == 0
    assert elsewhere.complete_requests == []
    assert broker.complete_requests == [f"Bearer {broker.issued[-1]}"]


def test_state_token_file_not_created_by_the_client_is_never_deleted(
    broker, gha_env, sleeps, ctx_factory, tmp_path
) -> None:
    token_file = exchange_to_file(broker, gha_env, sleeps, ctx_factory)
    precious = tmp_path / "precious"
    precious.write_text("eyJ.someone-elses-token\n")
    precious.chmod(0o600)
    edit_state(state_of(gha_env), token_file=str(precious))
    code, _ = complete(gha_env, sleeps, ctx_factory, f"--url={broker.url}")
    assert precious.exists()
    assert "Bearer eyJ.someone-elses-token" not in broker.complete_requests
    assert code == 2
    assert token_file.exists()  # the state no longer names it: left for the runner to clear


def test_token_file_replaced_after_exchange_is_never_deleted(
    broker, gha_env, sleeps, ctx_factory
) -> None:
    token_file = exchange_to_file(broker, gha_env, sleeps, ctx_factory)
    other = token_file.with_name("other")
    other.write_text("eyJ.a-different-file\n")
    other.chmod(0o600)
    other.replace(token_file)  # same path, another file
    code, _ = complete(gha_env, sleeps, ctx_factory, f"--url={broker.url}")
    assert code == 2
    assert token_file.exists()
    assert broker.complete_requests == []


def test_command_line_token_file_not_created_by_the_client_is_never_deleted(
    broker, sleeps, ctx_factory, tmp_path
) -> None:
    mine = tmp_path / "tok"
    mine.write_text("eyJ.some-token\n")
    mine.chmod(0o600)
    env = {"ERRAND_STATE_FILE": str(tmp_path / "no-state.json")}
    code, text = complete(env, sleeps, ctx_factory, f"--url={broker.url}", f"--token-file={mine}")
    assert code == 0 and broker.complete_requests == ["Bearer eyJ.some-token"]
    assert mine.exists() and "not removing" in text


def test_world_writable_token_file_is_refused(broker, gha_env, sleeps, ctx_factory) -> None:
    token_file = exchange_to_file(broker, gha_env, sleeps, ctx_factory)
    token_file.chmod(0o666)
    code, text = complete(gha_env, sleeps, ctx_factory, f"--url={broker.url}")
    assert code == 2 and "writable by" in text
    assert broker.complete_requests == []


def test_files_the_client_created_are_still_removed(broker, gha_env, sleeps, ctx_factory) -> None:
    token_file = exchange_to_file(broker, gha_env, sleeps, ctx_factory)
    code, _ = complete(
        gha_env, sleeps, ctx_factory, f"--url={broker.url}", f"--token-file={token_file}"
    )
    assert code == 0 and broker.complete_requests == [f"Bearer {broker.issued[-1]}"]
    assert not token_file.exists() and not token_file.parent.exists()
    assert not state_of(gha_env).exists()

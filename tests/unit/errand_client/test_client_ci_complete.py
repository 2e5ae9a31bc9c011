"""`errand complete`: completes the task, treats 401 as done, removes what exchange wrote.
The broker URL comes from --url or $ERRAND_URL, never from the state."""

from __future__ import annotations

import os
from pathlib import Path

from errand_client import ci
from errand_client.runner import default_state_path

AUD = "https://deploy.acme.example"


def exchange(broker, env, sleeps, ctx_factory, *extra: str):  # type: ignore[no-untyped-def]
    argv = [
        "exchange",
        f"--url={broker.url}",
        "--audience-for-oidc=errand-ci",
        f"--audience={AUD}",
        *extra,
    ]
    ctx = ctx_factory(env, sleeps, split=True)
    assert ci.main(argv, ctx) == 0, ctx.err.getvalue()
    return ctx


def complete(env, sleeps, ctx_factory, *argv: str):  # type: ignore[no-untyped-def]
    ctx = ctx_factory(env, sleeps)
    return ci.main(["complete", *argv], ctx), ctx.out.getvalue()


def test_complete_from_the_state_file(broker, gha_env, sleeps, ctx_factory) -> None:
    exchange(broker, gha_env, sleeps, ctx_factory)
    state = default_state_path(gha_env, "ERRAND_TOKEN")
    assert state.exists() and Path(gha_env["RUNNER_TEMP"]) in state.parents
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    code, text = complete(gha_env, sleeps, ctx_factory, f"--url={broker.url}")
    assert code == 0 and "task completed" in text
    assert broker.complete_requests == [f"Bearer {broker.issued[-1]}"]
    assert not state.exists()
    assert broker.issued[-1] not in text


def test_complete_removes_the_token_file(broker, gha_env, sleeps, ctx_factory) -> None:
    ctx = exchange(broker, gha_env, sleeps, ctx_factory, "--output=file")
    path = Path(ctx.out.getvalue().strip())
    code, _ = complete(gha_env, sleeps, ctx_factory, f"--url={broker.url}")
    assert code == 0
    assert broker.complete_requests == [f"Bearer {broker.issued[-1]}"]
    assert not path.exists() and not path.parent.exists()


def test_complete_with_token_file(broker, tmp_path, sleeps, ctx_factory) -> None:
    path = tmp_path / "tok"
    path.write_text("eyJ.some-token\n")
    code, text = complete({}, sleeps, ctx_factory, f"--url={broker.url}", f"--token-file={path}")
    assert code == 0 and broker.complete_requests == ["Bearer eyJ.some-token"]
    assert path.exists() and "not removing" in text  # exchange did not create it


def test_complete_with_env_token(broker, sleeps, ctx_factory, tmp_path) -> None:
    env = {
        "ERRAND_URL": broker.url,
        "ERRAND_TOKEN": "eyJ.env-token",
        "ERRAND_STATE_FILE": str(tmp_path / "s"),
    }
    code, _ = complete(env, sleeps, ctx_factory)
    assert code == 0 and broker.complete_requests == ["Bearer eyJ.env-token"]


def test_401_means_already_complete(broker, gha_env, sleeps, ctx_factory) -> None:
    exchange(broker, gha_env, sleeps, ctx_factory, "--output=file")
    broker.complete_script = [(401, {"error": "invalid_token", "error_description": "expired"}, {})]
    code, text = complete(gha_env, sleeps, ctx_factory, f"--url={broker.url}")
    assert code == 0 and "already invalid" in text
    assert not default_state_path(gha_env, "ERRAND_TOKEN").exists()


def test_503_is_retried(broker, gha_env, sleeps, ctx_factory) -> None:
    exchange(broker, gha_env, sleeps, ctx_factory)
    broker.complete_script = [broker.unavailable("3")]
    code, _ = complete(gha_env, sleeps, ctx_factory, f"--url={broker.url}")
    assert code == 0 and len(broker.complete_requests) == 2 and sleeps == [3.0]


def test_failures_exit_codes_and_files_still_removed(broker, gha_env, sleeps, ctx_factory) -> None:
    ctx = exchange(broker, gha_env, sleeps, ctx_factory, "--output=file")
    path = Path(ctx.out.getvalue().strip())
    broker.complete_script = [(400, {"error": "invalid_request", "error_description": "nope"}, {})]
    code, text = complete(gha_env, sleeps, ctx_factory, f"--url={broker.url}")
    assert code == 2 and "invalid_request: nope" in text
    assert not path.exists()  # a token file never outlives the job
    exchange(broker, gha_env, sleeps, ctx_factory)
    broker.complete_script = [broker.unavailable("1")] * 2
    code, _ = complete(gha_env, sleeps, ctx_factory, f"--url={broker.url}", "--max-attempts=2")
    assert code == 3


def test_nothing_to_complete(gha_env, sleeps, ctx_factory) -> None:
    code, text = complete(gha_env, sleeps, ctx_factory)
    assert code == 0 and "nothing to complete" in text


def test_env_token_and_a_different_state_token_both_complete(
    broker, gha_env, sleeps, ctx_factory
) -> None:
    exchange(broker, gha_env, sleeps, ctx_factory)
    gha_env["ERRAND_TOKEN"] = "eyJ.from-a-later-exchange"
    code, _ = complete(gha_env, sleeps, ctx_factory, f"--url={broker.url}")
    assert code == 0
    assert broker.complete_requests == [
        "Bearer eyJ.from-a-later-exchange",
        f"Bearer {broker.issued[-1]}",
    ]


def test_only_regular_files_are_read_or_removed(broker, tmp_path, sleeps, ctx_factory) -> None:
    target = tmp_path / "precious"
    target.write_text("eyJ.some-token\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    code, text = complete({}, sleeps, ctx_factory, f"--url={broker.url}", f"--token-file={link}")
    assert code == 2 and "symbolic link" in text  # a symlink is never read
    assert target.exists() and link.is_symlink() and broker.complete_requests == []
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # like /dev/null or a device: not a regular file, never read nor removed
    code, text = complete({}, sleeps, ctx_factory, f"--url={broker.url}", f"--token-file={fifo}")
    assert code == 2 and "cannot read a token" in text and fifo.exists()


def test_a_state_file_that_is_not_ours_is_left_alone(tmp_path, sleeps, ctx_factory) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not errand state")
    code, text = complete({}, sleeps, ctx_factory, f"--state-file={notes}")
    assert code == 0 and "nothing to complete" in text and notes.exists()

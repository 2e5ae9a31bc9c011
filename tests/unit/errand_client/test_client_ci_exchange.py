"""`errand exchange` in a simulated GitHub Actions job (and GitLab CI)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from errand_client import ci
from errand_client.runner import read_github_file

AUD = "https://deploy.acme.example"


def run(argv, env, sleeps, ctx_factory, **kw):  # type: ignore[no-untyped-def]
    ctx = ctx_factory(env, sleeps, **kw)
    code = ci.main(["exchange", *argv], ctx)
    return code, ctx


def base_args(broker) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        f"--url={broker.url}",
        "--audience-for-oidc=errand-ci",
        f"--audience={AUD}",
        "--scope=deploy:write",
    ]


def test_github_env_output_masks_first(broker, gha_env, sleeps, ctx_factory) -> None:
    code, ctx = run(base_args(broker), gha_env, sleeps, ctx_factory)
    assert code == 0
    token = broker.issued[-1]
    lines = ctx.out.getvalue().splitlines()
    with_token = [i for i, line in enumerate(lines) if token in line]
    assert with_token == [0] and lines[0] == f"::add-mask::{token}"  # first line, and only there
    assert read_github_file(gha_env["GITHUB_ENV"]) == {"ERRAND_TOKEN": token}
    outputs = read_github_file(gha_env["GITHUB_OUTPUT"])
    assert outputs["task-id"].startswith("ci-") and outputs["expires-in"] == "300"
    assert token not in Path(gha_env["GITHUB_OUTPUT"]).read_text()
    # the OIDC token was fetched for Errand's audience, and sent as the subject token
    assert broker.oidc_requests[0]["query"]["audience"] == ["errand-ci"]
    form = broker.token_requests[0]
    assert form["audience"] == [AUD] and form["scope"] == ["deploy:write"]
    assert form["task_id"] == [outputs["task-id"]]


def test_stdout_output_masks_before_printing(broker, gha_env, sleeps, ctx_factory) -> None:
    code, ctx = run([*base_args(broker), "--output=stdout"], gha_env, sleeps, ctx_factory)
    assert code == 0
    token = broker.issued[-1]
    text = ctx.out.getvalue()
    assert text.index(f"::add-mask::{token}") < text.index(f"\n{token}\n")
    code, ctx = run(
        [*base_args(broker), "--output=stdout"], gha_env, sleeps, ctx_factory, split=True
    )
    assert ctx.out.getvalue() == broker.issued[-1] + "\n"  # stdout: only what $(...) captures
    assert ctx.err.getvalue().startswith("::add-mask::")


def test_file_output_is_private_and_outside_the_workspace(
    broker, gha_env, sleeps, ctx_factory
) -> None:
    code, ctx = run([*base_args(broker), "--output=file"], gha_env, sleeps, ctx_factory, split=True)
    assert code == 0
    path = Path(ctx.out.getvalue().strip())
    assert path.read_text().strip() == broker.issued[-1]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert Path(gha_env["RUNNER_TEMP"]) in path.parents
    assert Path(gha_env["GITHUB_WORKSPACE"]) not in path.parents
    assert read_github_file(gha_env["GITHUB_OUTPUT"])["token-file"] == str(path)
    assert ctx.err.getvalue().startswith("::add-mask::")


def test_file_output_never_in_the_workspace(
    broker, gha_env, sleeps, ctx_factory, monkeypatch, tmp_path
) -> None:
    inside = Path(gha_env["GITHUB_WORKSPACE"]) / "tmp"
    inside.mkdir()
    gha_env["RUNNER_TEMP"] = str(inside)
    monkeypatch.setattr("tempfile.tempdir", str(inside))
    code, ctx = run([*base_args(broker), "--output=file"], gha_env, sleeps, ctx_factory)
    assert code == 2
    assert "outside the workspace" in ctx.out.getvalue()
    assert broker.token_requests == [] and list(inside.iterdir()) == []


def test_runner_temp_inside_workspace_falls_back_to_system_tmp(
    broker, gha_env, sleeps, ctx_factory, monkeypatch, tmp_path
) -> None:
    inside = Path(gha_env["GITHUB_WORKSPACE"]) / "tmp"
    inside.mkdir()
    gha_env["RUNNER_TEMP"] = str(inside)
    outside = tmp_path / "system-tmp"
    outside.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(outside))
    code, ctx = run([*base_args(broker), "--output=file"], gha_env, sleeps, ctx_factory, split=True)
    assert code == 0
    assert outside in Path(ctx.out.getvalue().strip()).parents


def test_missing_request_variables(broker, gha_env, sleeps, ctx_factory) -> None:
    del gha_env["ACTIONS_ID_TOKEN_REQUEST_URL"], gha_env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"]
    gha_env["ERRAND_STATIC_TOKEN"] = "a.b.c"  # there is no static-secret fallback to find
    code, ctx = run(base_args(broker), gha_env, sleeps, ctx_factory)
    assert code == 2
    text = ctx.out.getvalue()
    assert text.startswith("::error title=errand::")
    assert "ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN" in text
    assert "permissions: id-token: write" in text and "fork" in text
    assert broker.token_requests == []


def test_503_retried_with_a_fresh_oidc_token_per_attempt(
    broker, gha_env, sleeps, ctx_factory
) -> None:
    broker.token_script = [broker.unavailable("1"), broker.unavailable("600")]
    code, _ = run(base_args(broker), gha_env, sleeps, ctx_factory)
    assert code == 0
    assert len(broker.oidc_requests) == 3 and len(broker.token_requests) == 3
    assert len(set(broker.subject_tokens())) == 3
    assert sleeps == [1.0, 10.0]  # Retry-After honoured, capped at 10 s


def test_retries_exhausted_exit_3(broker, gha_env, sleeps, ctx_factory) -> None:
    broker.token_script = [broker.unavailable("1")] * 3
    code, ctx = run([*base_args(broker), "--max-attempts=3"], gha_env, sleeps, ctx_factory)
    assert code == 3
    assert "gave up after 3 attempt(s)" in ctx.out.getvalue()
    assert read_github_file(gha_env["GITHUB_ENV"]) == {}


def test_no_retry_on_400_exit_2(broker, gha_env, sleeps, ctx_factory) -> None:
    broker.token_script = [
        (400, {"error": "invalid_scope", "error_description": "scope: not allowed"}, {})
    ]
    code, ctx = run(base_args(broker), gha_env, sleeps, ctx_factory)
    assert code == 2
    assert "invalid_scope: scope: not allowed" in ctx.out.getvalue()
    assert len(broker.token_requests) == 1 and len(broker.oidc_requests) == 1 and sleeps == []


def test_github_output_mode(broker, gha_env, sleeps, ctx_factory) -> None:
    code, ctx = run([*base_args(broker), "--output=github-output"], gha_env, sleeps, ctx_factory)
    assert code == 0
    token = broker.issued[-1]
    assert read_github_file(gha_env["GITHUB_OUTPUT"])["token"] == token
    assert ctx.out.getvalue().startswith(f"::add-mask::{token}\n")
    assert read_github_file(gha_env["GITHUB_ENV"]) == {}


def test_task_purpose_lifetime_and_env_name(broker, gha_env, sleeps, ctx_factory) -> None:
    argv = [
        *base_args(broker),
        "--task-id=deploy-42",
        "--purpose=ship v2",
        "--lifetime=120",
        "--env-name=DEPLOY_TOKEN",
    ]
    code, _ = run(argv, gha_env, sleeps, ctx_factory)
    assert code == 0
    form = broker.token_requests[0]
    assert (form["task_id"], form["purpose"], form["requested_lifetime"]) == (
        ["deploy-42"],
        ["ship v2"],
        ["120"],
    )
    assert read_github_file(gha_env["GITHUB_ENV"]) == {"DEPLOY_TOKEN": broker.issued[-1]}


@pytest.mark.parametrize("name", ["GITHUB_TOKEN", "BAD-NAME", "1X"])
def test_env_name_is_checked_before_exchanging(broker, gha_env, sleeps, ctx_factory, name) -> None:
    code, _ = run([*base_args(broker), f"--env-name={name}"], gha_env, sleeps, ctx_factory)
    assert code == 2 and broker.token_requests == []


def test_undeliverable_token_completes_the_task(broker, gha_env, sleeps, ctx_factory) -> None:
    os.unlink(gha_env["GITHUB_ENV"])
    os.mkdir(gha_env["GITHUB_ENV"])  # appending to it fails
    code, _ = run(base_args(broker), gha_env, sleeps, ctx_factory)
    assert code == 2
    assert broker.complete_requests == [f"Bearer {broker.issued[-1]}"]


def test_gitlab_reads_the_id_tokens_variable(broker, tmp_path, sleeps, ctx_factory) -> None:
    project = tmp_path / "project"
    project.mkdir()
    jwt_like = "eyJhbGciOiJFUzI1NiJ9.eyJhdWQiOiJvdGhlciJ9.c2ln"  # aud: "other"
    env = {
        "GITLAB_CI": "true",
        "CI_JOB_ID": "77",
        "CI_PROJECT_DIR": str(project),
        "ERRAND_ID_TOKEN": jwt_like,
    }
    argv = [
        f"--url={broker.url}",
        "--id-token-var=ERRAND_ID_TOKEN",
        "--audience-for-oidc=errand-ci",
        "--output=stdout",
    ]
    code, ctx = run(argv, env, sleeps, ctx_factory, split=True)
    assert code == 0
    assert broker.subject_tokens() == [jwt_like] and broker.oidc_requests == []
    assert ctx.out.getvalue() == broker.issued[-1] + "\n"
    assert "::add-mask::" not in ctx.err.getvalue()  # GitLab has no such command
    assert "is for audience 'other'" in ctx.err.getvalue()  # a hint before the broker says no


def test_gitlab_without_id_token_var(broker, sleeps, ctx_factory) -> None:
    code, ctx = run([f"--url={broker.url}"], {"GITLAB_CI": "true"}, sleeps, ctx_factory)
    assert code == 2 and "id_tokens" in ctx.out.getvalue()


def test_outside_ci(broker, sleeps, ctx_factory) -> None:
    code, ctx = run([f"--url={broker.url}"], {}, sleeps, ctx_factory)
    assert code == 2 and "no workload identity" in ctx.out.getvalue()


def test_url_is_required(gha_env, sleeps, ctx_factory) -> None:
    code, ctx = run(["--audience-for-oidc=x"], gha_env, sleeps, ctx_factory)
    assert code == 2 and "--url" in ctx.out.getvalue()


def test_register_fits_the_errand_cli() -> None:
    from broker.cli import build_parser

    parser = build_parser()  # registers exchange and complete itself
    args = parser.parse_args(
        ["exchange", "--url=https://e.example", "--scope=a b", "--resource=https://r.example"]
    )
    assert args.fn is ci.cmd_exchange and args.audiences == ["https://r.example"]
    args = parser.parse_args(["complete", "--token-file=/tmp/x"])
    assert args.fn is ci.cmd_complete

"""The operator CLI as operators expect it: ISO 8601 UTC times for people and numbers for
`--json`, evidence as a table, a typed confirmation before revoke-all, `--version`, help on
every option, shell completion, one line instead of a traceback for a user's mistake, the
configuration check of the file the broker would load, typed `--claim` values, and the
gunicorn settings that keep two brokers on one machine apart.

The admin API is answered in process (requests is patched): no broker runs."""

from __future__ import annotations

import argparse
import io
import json
import os
import runpy
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from broker import cli
from broker.cli import processes
from broker.tokens.evidence import sign_record
from broker.tokens.keyring import KeyRing, generate_key

ROOT = Path(__file__).resolve().parents[3]
ERRAND = str(Path(sys.executable).parent / "errand")
BROKER = "http://127.0.0.1:8080"
ISSUER = "https://errand.test"
ADMIN = "admin-credential-0123456789abcdef"
EXP = 1796314993  # 2026-12-03T16:23:13Z
EXP_ISO = "2026-12-03T16:23:13Z"


# -- an admin API answered in process ------------------------------------------------------
class _Answer:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code = status
        self.headers = {"Content-Type": "application/json"}
        self._body = body

    def json(self) -> Any:
        return self._body


class FakeAdmin:
    """Answers by (method, path); records every request made."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], Any] = {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def answer(self, method: str, url: str, **kw: Any) -> _Answer:
        method, path = method.upper(), url.removeprefix(BROKER)
        self.calls.append((method, path, kw))
        if (method, path) not in self.answers:
            return _Answer(404, {"error": "not_found", "error_description": path})
        return _Answer(200, self.answers[(method, path)])

    def paths(self) -> list[str]:
        return [f"{m} {p}" for m, p, _ in self.calls]


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeAdmin]:
    fake = FakeAdmin()

    def request(session: requests.Session, method: str, url: str, **kw: Any) -> _Answer:
        return fake.answer(method, url, **kw)

    monkeypatch.setattr(requests.Session, "request", request)
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN)
    monkeypatch.setenv("ERRAND_URL", BROKER)
    monkeypatch.setenv("ERRAND_ADMIN_TOKEN_FILE", str(token_file))
    yield fake


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = cli.main(list(argv))
    except SystemExit as exc:  # sys.exit("errand: ...") prints its message and exits 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            status = 1
        else:
            status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    key_dir = tmp_path_factory.mktemp("evidence-keys")
    generate_key(key_dir)
    return KeyRing.from_dir(key_dir)


def _record(keyring: KeyRing, **fields: Any) -> str:
    return sign_record({"jti": fields.pop("jti", "rev_1"), "iat": EXP, **fields}, keyring, ISSUER)


# -- 1. ISO 8601 UTC times for people; numbers for --json --------------------------------
GRANT = {
    "jti": "jti-0123456789",
    "identity_id": "acme-app-deploy",
    "task_id": "deploy-4711",
    "exp": EXP,
    "scopes": ["deploy:write"],
}


def test_grants_show_expiry_in_iso_utc_and_json_keeps_the_number(admin, capsys):
    admin.answers[("GET", "/admin/grants")] = {"grants": [GRANT]}
    status, out, _ = run(capsys, "grants")
    assert status == 0
    assert EXP_ISO in out and str(EXP) not in out
    assert "EXPIRES (UTC)" in out and out.strip().endswith("1 live grant(s)")
    status, out, _ = run(capsys, "grants", "--json")
    assert json.loads(out)["grants"][0]["exp"] == EXP


def test_audit_times_are_iso_utc(admin, capsys):
    admin.answers[("GET", "/admin/audit")] = {
        "events": [{"ts": EXP + 0.25, "event": "token.exchange", "outcome": "issued"}]
    }
    status, out, _ = run(capsys, "audit", "deploy-4711")
    assert status == 0
    assert out.startswith(EXP_ISO + " token.exchange")
    status, out, _ = run(capsys, "audit", "deploy-4711", "--json")
    assert json.loads(out)[0]["ts"] == EXP + 0.25


def test_review_times_are_iso_utc(admin, capsys):
    admin.answers[("GET", "/admin/identities/review")] = {
        "generated_at": "2026-12-03T16:23:13+00:00",
        "dormant_days": 90,
        "expiring_days": 30,
        "identities": [
            {
                "id": "acme-app-deploy",
                "type": "service",
                "owner": "platform-team",
                "purpose": "deploy",
                "state": "active",
                "expires": "2027-01-31",
                "last_exchange": "2026-12-03T15:00:00+00:00",
                "live_grants": 1,
                "allowances": {"audiences": ["a"], "scopes": ["s"], "max_ttl_seconds": 300},
                "flags": [],
            }
        ],
        "offboarded": [{"id": "old-bot", "at": EXP, "actor": "admin:alice"}],
        "summary": {"identities": 1},
    }
    status, out, _ = run(capsys, "review")
    assert status == 0
    assert f"generated {EXP_ISO}" in out
    assert "2026-12-03T15:00:00Z" in out and "+00:00" not in out
    assert f"old-bot at {EXP_ISO} by admin:alice" in out


def test_keys_status_is_a_table_with_iso_times(admin, capsys):
    keys = {
        "source": "redis",
        "keys": [
            {
                "kid": "kid-new",
                "alg": "ES256",
                "state": "active",
                "created_at": EXP,
                "activate_at": EXP,
                "retire_at": None,
            },
            {
                "kid": "kid-bad",
                "alg": None,
                "state": "refused",
                "reason": "its authentication failed",
            },
        ],
    }
    admin.answers[("GET", "/admin/keys")] = keys
    status, out, _ = run(capsys, "keys", "status")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["KID", "ALG", "STATE"]
    assert "kid-new" in lines[1] and EXP_ISO in lines[1] and "active" in lines[1]
    assert "refused" in lines[2] and "its authentication failed" in lines[2]
    status, out, _ = run(capsys, "keys", "status", "--json")
    assert json.loads(out) == keys


# -- 2. evidence list: what, who, why, how many ------------------------------------------
def test_evidence_list_is_a_table_and_json_is_json(admin, capsys, keyring):
    bulk = _record(
        keyring,
        jti="rev_bulk",
        action="revoke",
        selector={"identity": "acme-app-deploy"},
        reason="INC-42 leaked runner",
        actor="admin:alice",
        revoked=3,
        at=EXP,
    )
    everything = _record(
        keyring,
        jti="rev_all",
        action="revoke-all",
        selector={"all": True},
        reason="INC-43 fleet",
        actor="admin:bob",
        revoked=48213,
        epoch=7,
        at=EXP,
    )
    records = [
        {"stream_id": "2-0", "id": "rev_all", "jws": everything},
        {"stream_id": "1-0", "id": "rev_bulk", "jws": bulk},
    ]
    admin.answers[("GET", "/admin/evidence")] = {"records": records}
    status, out, _ = run(capsys, "evidence", "list")
    assert status == 0
    header, first, second, *_ = out.splitlines()
    assert header.split() == ["WHEN", "(UTC)", "RECORD", "WHAT", "WHO", "COUNT", "WHY"]
    for expected in (EXP_ISO, "rev_all", "everything (epoch 7)", "admin:bob", "48213", "INC-43"):
        assert expected in first
    for expected in ("identity=acme-app-deploy", "admin:alice", " 3 ", "INC-42 leaked runner"):
        assert expected in second
    assert everything not in out  # the table, not the raw records

    status, out, _ = run(capsys, "evidence", "list", "--json")
    assert json.loads(out) == {"records": records}
    status, out, _ = run(capsys, "evidence", "list", "--jws")
    assert out.splitlines() == [everything, bulk]


def test_evidence_verify_takes_list_json_and_says_its_exit_status(admin, capsys, keyring, tmp_path):
    admin.answers[("GET", "/.well-known/oauth-authorization-server")] = {"issuer": ISSUER}
    admin.answers[("GET", "/evidence/keys")] = keyring.jwks()
    good = _record(keyring, action="revoke", reason="why", actor="a", revoked=1, at=EXP)
    listed = tmp_path / "records.json"
    listed.write_text(json.dumps({"records": [{"id": "rev_1", "jws": good}]}))
    status, out, err = run(capsys, "evidence", "verify", str(listed))
    assert status == 0 and "VALID" in out, err

    header, payload, sig = good.split(".")
    tampered = tmp_path / "tampered.jws"
    tampered.write_text(f"{good}\n{header}.{payload[:-4]}AAAA.{sig}\n")
    status, out, err = run(capsys, "evidence", "verify", str(tampered))
    assert status == 1 and "INVALID" in err

    status, _, err = run(capsys, "evidence", "verify", str(tmp_path / "missing.jws"))
    assert status == 2
    assert err.strip() == f"errand: {tmp_path / 'missing.jws'}: No such file or directory"


# -- 3. revoke-all: typed confirmation, rotation said; revoke-all-status ------------------
REVOKE_ALL = {"epoch": 7, "revoked": 12, "record_id": "rev_x", "record": "a.b.c"}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_revoke_all_refuses_without_yes_when_stdin_is_not_a_terminal(admin, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("127.0.0.1:8080\n"))
    admin.answers[("POST", "/admin/revoke-all")] = REVOKE_ALL
    status, out, err = run(capsys, "revoke-all", "--reason", "INC-43")
    assert status == 1 and "--yes" in err and "Traceback" not in err
    assert admin.calls == []
    status, out, _ = run(capsys, "revoke-all", "--reason", "INC-43", "--yes")
    assert status == 0 and "epoch is now 7" in out
    assert admin.paths() == ["POST /admin/revoke-all"]


@pytest.mark.parametrize(("typed", "sent"), [("127.0.0.1:8080\n", True), ("yes\n", False)])
def test_revoke_all_on_a_terminal_wants_the_broker_host_typed(
    admin, capsys, monkeypatch, typed, sent
):
    monkeypatch.setattr(sys, "stdin", _Terminal(typed))
    admin.answers[("POST", "/admin/revoke-all")] = REVOKE_ALL
    status, _, err = run(capsys, "revoke-all", "--reason", "INC-43")
    assert "Type the broker's host (127.0.0.1:8080)" in err
    assert (admin.paths() == ["POST /admin/revoke-all"]) is sent
    assert status == (0 if sent else 1)
    if not sent:
        assert "not confirmed; nothing was revoked" in err


def test_revoke_all_says_when_it_rotated_the_key(admin, capsys):
    admin.answers[("POST", "/admin/revoke-all")] = {
        **REVOKE_ALL,
        "key_rotation": {
            "kid": "kid-new",
            "activate_at": EXP,
            "emergency": True,
            "previous": "kid-old",
            "retired_or_removed": ["kid-old"],
        },
    }
    status, out, _ = run(capsys, "revoke-all", "--reason", "INC-44", "--rotate-key", "--yes")
    assert status == 0
    assert f"signing key rotated (emergency): kid-new signs from {EXP_ISO}" in out
    assert "removed from the JWKS: kid-old" in out


def test_revoke_all_status_defaults_to_the_latest_and_prints_numbers(admin, capsys, keyring):
    admin.answers[("GET", "/admin/evidence")] = {
        "records": [
            {"id": "r3", "jws": _record(keyring, action="revoke", selector={"task": "t"})},
            {"id": "r2", "jws": _record(keyring, action="revoke-all", epoch=9)},
            {"id": "r1", "jws": _record(keyring, action="revoke-all", epoch=8)},
        ]
    }
    progress = {
        "examined": "48213",
        "revoked": "48200",
        "batches": "97",
        "passes": "1",
        "updated_at": str(EXP),
        "done": "1",
    }
    admin.answers[("GET", "/admin/revoke-all/9")] = {"epoch": 9, "progress": progress}
    status, out, _ = run(capsys, "revoke-all-status")
    assert status == 0
    assert "GET /admin/revoke-all/9" in admin.paths()
    assert "epoch 9: clean-up done" in out
    assert "examined 48213, revoked 48200, batches 97, passes 1" in out
    assert f"updated {EXP_ISO}" in out
    status, out, _ = run(capsys, "revoke-all-status", "9", "--json")
    assert json.loads(out) == {
        "epoch": 9,
        "progress": {
            "examined": 48213,
            "revoked": 48200,
            "batches": 97,
            "passes": 1,
            "updated_at": EXP,
            "done": 1,
        },
    }


def test_revoke_all_status_of_an_unknown_epoch_fails(admin, capsys, keyring):
    admin.answers[("GET", "/admin/evidence")] = {
        "records": [{"id": "r1", "jws": _record(keyring, action="revoke-all", epoch=8)}]
    }
    admin.answers[("GET", "/admin/revoke-all/8")] = {"epoch": 8, "progress": {}}
    admin.answers[("GET", "/admin/revoke-all/99")] = {"epoch": 99, "progress": {}}
    status, out, err = run(capsys, "revoke-all-status", "99")
    assert status == 1 and "no revoke-all is known for epoch 99" in err and out == ""
    # Known (its record exists) but not started yet: said, and not an error.
    status, out, _ = run(capsys, "revoke-all-status", "8")
    assert status == 0 and "epoch 8: clean-up not started yet" in out


# -- 4. --version, help on every option, completion ---------------------------------------
def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"errand {version('errand')}"


def _parsers(
    parser: argparse.ArgumentParser, path: str = "errand"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def test_every_command_and_option_has_help():
    missing = []
    for path, parser in _parsers(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if a.help}
                missing += [f"{path} {n} (command)" for n in action.choices if n not in helped]
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def _complete(script: str, *words: str) -> list[str]:
    """What bash offers after `errand WORDS...` (the last word being completed)."""
    line = " ".join(["errand", *words])
    probe = (
        f"{script}\nCOMP_WORDS=(errand {' '.join(words)})\nCOMP_CWORD={len(words)}\n"
        f'{"_errand_complete"}\nprintf "%s\\n" "${{COMPREPLY[@]}}"\n'
    )
    out = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stderr == "", (line, out.stderr)
    return sorted(w for w in out.stdout.split() if w)


def test_completion_scripts_come_from_the_parser(capsys):
    status, bash, _ = run(capsys, "completion", "bash")
    assert status == 0 and "complete -o default -F _errand_complete errand" in bash
    assert _complete(bash, "revoke") == ["revoke", "revoke-all", "revoke-all-status"]
    assert _complete(bash, "keys", "st") == ["status"]
    assert _complete(bash, "grants", "--li") == ["--limit"]
    assert _complete(bash, "--url", "x", "evidence", "list", "--j") == ["--json", "--jws"]
    assert _complete(bash, "completion", "") == ["--help", "-h", "bash", "zsh"]
    status, zsh, _ = run(capsys, "completion", "zsh")
    assert status == 0 and "bashcompinit" in zsh and zsh.endswith(bash)


# -- 5. no traceback for a user's mistake ------------------------------------------------
@pytest.mark.slow  # runs errand in a new Python process
def test_a_closed_pipe_ends_quietly():
    """`errand keys kek-generate | head -0`: the reader is gone before errand writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [ERRAND, "keys", "kek-generate"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 1


def test_a_closed_pipe_inside_main(admin, monkeypatch):
    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    admin.answers[("GET", "/admin/grants")] = {"grants": [GRANT]}
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main(["grants"]) == 1


@pytest.mark.slow  # runs errand in a new Python process
def test_a_missing_directory_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = subprocess.run(
        [ERRAND, "dev-token", "--state-dir", str(blocker / "state")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.strip() == f"errand: {blocker / 'state' / 'dev-issuer'}: Not a directory"


@pytest.fixture
def serve_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """A complete, valid broker environment (nothing listens; exec is refused)."""
    for name in list(os.environ):
        if name.startswith("ERRAND_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    key_dir = tmp_path / "keys"
    generate_key(key_dir)
    secret = tmp_path / "demo.secret"
    secret.write_text("demo-secret-0123456789\n")
    admin_file = tmp_path / "admin-token"
    admin_file.write_text(ADMIN)
    env = {
        "ERRAND_CONFIG": str(ROOT / "config" / "errand.dev.yaml"),
        "ERRAND_DEMO_CLIENT_SECRET_FILE": str(secret),
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "ERRAND_SIGNING_KEY_DIR": str(key_dir),
        "ERRAND_ADMIN_TOKEN_FILE": str(admin_file),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def no_exec(*args: Any) -> None:
        raise AssertionError(f"errand serve handed over to gunicorn: {args}")

    monkeypatch.setattr(processes.os, "execvp", no_exec)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ERRAND_CONFIG": None}, "errand: missing environment settings: ERRAND_CONFIG"),
        ({"ERRAND_WEB_WORKERS": "many"}, "errand: bad numeric environment setting"),
        ({"ERRAND_CONFIG": "{tmp}/absent.yaml"}, "cannot read configuration"),
        ({"ERRAND_SIGNING_KEY_DIR": "{tmp}/no-keys"}, "errand: signing key directory"),
        ({"ERRAND_ADMIN_TOKEN_FILE": "{tmp}/absent"}, "absent: No such file or directory"),
    ],
)
def test_serve_checks_before_handing_over_to_gunicorn(
    serve_env, monkeypatch, capsys, tmp_path, change, message
):
    for name, value in change.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value.format(tmp=tmp_path))
    status, _, err = run(capsys, "serve")
    assert status == 1
    assert message in err and "Traceback" not in err
    assert err.startswith("errand: ")


def test_serve_with_a_bad_config_names_the_file(serve_env, monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("broker: {colour: blue}\n")
    monkeypatch.setenv("ERRAND_CONFIG", str(bad))
    status, _, err = run(capsys, "serve")
    assert status == 1 and err.startswith(f"errand: {bad}: invalid configuration")


def test_serve_refuses_a_busy_port(serve_env, monkeypatch, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("ERRAND_BIND", f"127.0.0.1:{port}")
        status, _, err = run(capsys, "serve")
    assert status == 1
    assert err.strip() == (
        f"errand: cannot listen on 127.0.0.1:{port}: Address already in use (ERRAND_BIND)"
    )


def test_serve_hands_over_when_everything_checks_out(serve_env, monkeypatch):
    handed: list[list[str]] = []
    monkeypatch.setattr(processes.os, "execvp", lambda exe, argv: handed.append(argv))
    monkeypatch.setenv("ERRAND_BIND", f"127.0.0.1:{_free_port()}")
    assert cli.main(["serve"]) == 0
    ((argv,),) = [handed]
    assert argv[1:4] == ["-m", "gunicorn", "-c"] and argv[-1] == "broker.app:create_app()"


# -- 8. config check checks what the broker would load -----------------------------------
def test_config_check_without_a_path_checks_errand_config(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("ERRAND_CONFIG", raising=False)
    status, out, err = run(capsys, "config", "check")
    assert status == 1 and "ERRAND_CONFIG is not set" in err and out == ""

    bad = tmp_path / "errand.yaml"
    bad.write_text("broker: {colour: blue}\n")
    monkeypatch.setenv("ERRAND_CONFIG", str(bad))
    status, _, err = run(capsys, "config", "check")
    assert status == 1 and err.startswith(f"errand: {bad} (from ERRAND_CONFIG): ")


def test_config_check_says_which_file_it_checked(monkeypatch, capsys, tmp_path):
    secret = tmp_path / "demo.secret"
    secret.write_text("demo-secret-0123456789\n")
    monkeypatch.setenv("ERRAND_DEMO_CLIENT_SECRET_FILE", str(secret))
    dev = ROOT / "config" / "errand.dev.yaml"
    monkeypatch.setenv("ERRAND_CONFIG", str(dev))
    status, out, _ = run(capsys, "config", "check")
    assert status == 0 and out.startswith(f"{dev} (from ERRAND_CONFIG): OK (")


# -- 9. dev-token claims are JSON when they parse ----------------------------------------
def test_dev_token_claims_are_typed(capsys, tmp_path):
    status, out, _ = run(
        capsys,
        "dev-token",
        "--state-dir",
        str(tmp_path),
        "--claim",
        "exp=1700000000",
        "--claim",
        "ref_protected=true",
        "--claim",
        'groups=["a","b"]',
        "--claim",
        "ref=refs/heads/dev",
        "--claim",
        'run_id="42"',
        "--claim-str",
        "run_number=7",
    )
    assert status == 0
    claims = jwt.decode(out.strip(), options={"verify_signature": False})
    assert claims["exp"] == 1700000000
    assert claims["ref_protected"] is True
    assert claims["groups"] == ["a", "b"]
    assert claims["ref"] == "refs/heads/dev"
    assert claims["run_id"] == "42" and claims["run_number"] == "7"


def test_dev_token_claim_needs_a_name(capsys, tmp_path):
    status, _, err = run(capsys, "dev-token", "--state-dir", str(tmp_path), "--claim", "novalue")
    assert status == 2 and "expected NAME=VALUE" in err


# -- 10. gunicorn: no shared control socket, no metrics folder left behind ----------------
GUNICORN_CONF = ROOT / "config" / "gunicorn.conf.py"


@pytest.fixture
def conf_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    # setenv first, so that whatever the configuration sets is undone afterwards
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for name in list(os.environ):
        if name.startswith("ERRAND_"):
            monkeypatch.delenv(name)
    return tmp_path


def test_gunicorn_has_no_shared_control_socket_and_removes_its_metrics_dir(conf_env):
    first = runpy.run_path(str(GUNICORN_CONF))
    made = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert first["control_socket_disable"] is True
    assert made.parent == conf_env and made.is_dir() and made.stat().st_mode & 0o077 == 0
    # gunicorn reads the file again on SIGHUP: the same directory, still removed at exit.
    again = runpy.run_path(str(GUNICORN_CONF))
    assert Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]) == made
    again["on_exit"](None)
    assert not made.exists()


def test_gunicorn_leaves_a_given_metrics_dir_alone(conf_env, monkeypatch):
    given = conf_env / "given"
    given.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))
    runpy.run_path(str(GUNICORN_CONF))["on_exit"](None)
    assert given.is_dir()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(given)

"""The operator CLI sends the admin credential only over https, or plain http to a loopback
address: a plain-http `--url` to another host is refused before anything is read or sent,
with one clear line and no traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from broker import cli

pytestmark = pytest.mark.regression
ADMIN = "admin-credential-0123456789abcdef"


class Sent:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []


class _Answer:
    status_code = 200
    headers = {"Content-Type": "application/json"}

    def json(self) -> Any:
        return {"grants": [], "events": [], "records": [], "identities": [], "summary": {}}


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    """Every HTTP request any code makes, recorded and answered without a network."""
    record = Sent()

    def request(self: requests.Session, method: str, url: str, **kw: Any) -> _Answer:
        record.calls.append((method, url, kw.get("headers") or {}))
        return _Answer()

    monkeypatch.setattr(requests.Session, "request", request)
    return record


@pytest.fixture
def admin_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin-token"
    path.write_text(ADMIN)
    return path


def _refused(capsys: pytest.CaptureFixture[str], err: pytest.ExceptionInfo[SystemExit]) -> str:
    message = str(err.value.code)
    assert message.startswith("errand: ") and "https" in message and "\n" not in message
    assert "Traceback" not in capsys.readouterr().err
    return message


@pytest.mark.parametrize(
    "url", ["http://example.com", "http://errand.internal:8080", "http://127.0.0.1.nip.io"]
)
def test_cli_refuses_plain_http_admin_url_before_sending(
    url: str, sent: Sent, admin_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as err:
        cli.main(["grants", "--url", url, "--admin-token-file", str(admin_file)])
    _refused(capsys, err)
    assert sent.calls == []


def test_cli_refuses_plain_http_for_every_admin_command(
    sent: Sent, admin_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--url", "http://example.com", "--admin-token-file", str(admin_file)]
    for argv in (
        ["audit", "t-1", *base],
        ["revoke", "--jti", "j-1", *base],
        ["revoke-all", "--reason", "x", *base],
        ["keys", "rotate", "--emergency", *base],
        ["keys", "status", *base],
        ["evidence", "list", *base],
        ["review", *base],
        ["identity", "suspend", "acme-deploy", *base],
    ):
        with pytest.raises(SystemExit) as err:
            cli.main(argv)
        _refused(capsys, err)
    assert sent.calls == []


def test_inventory_cli_refuses_plain_http(
    sent: Sent, admin_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as err:
        cli.main(["review", "--url", "http://example.com", "--admin-token-file", str(admin_file)])
    _refused(capsys, err)
    assert sent.calls == []


def test_evidence_verify_refuses_plain_http_keys(
    sent: Sent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "record.jws"
    record.write_text("a.b.c")
    with pytest.raises(SystemExit) as err:
        cli.main(["evidence", "verify", str(record), "--url", "http://example.com"])
    _refused(capsys, err)
    assert sent.calls == []


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080", "http://127.0.0.5:9", "http://[::1]:8080", "https://errand.example"],
)
def test_cli_sends_to_https_or_loopback(url: str, sent: Sent, admin_file: Path) -> None:
    assert cli.main(["grants", "--url", url, "--admin-token-file", str(admin_file)]) == 0
    ((method, sent_to, headers),) = sent.calls
    assert method == "GET" and sent_to.startswith(url.rstrip("/") + "/admin/grants")
    assert headers["Authorization"] == f"Bearer {ADMIN}"

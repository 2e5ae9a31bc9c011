"""The approval webhook: a new approval is enqueued for the worker and never blocks the
exchange (even when enqueueing fails); the worker's POST is HMAC-signed, names no token, and
its outcome is audited (delivered, or failed with why). The receiver is a real HTTP server
on 127.0.0.1 in this process."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from rq.job import Job

from broker.config.loading import ConfigError
from broker.domain.approval_webhook import deliver, webhook_url_problem
from tests.support.builders import UNIT_ISSUER, make_config
from tests.support.policy import PAY, with_policy
from tests.support.redis import stream_events
from tests.support.stack import free_port
from workers.approval_webhook import post_json

SECRET = b"s" * 40


class Receiver:
    """Records each POST; answers `status`."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.status = 204
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append((dict(self.headers), body))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def webhook_config(tmp_path: Path, url: str, secret: bytes = SECRET) -> Any:
    policies = tmp_path / "policies"
    if not policies.exists():
        shutil.copytree(Path(__file__).resolve().parents[3] / "config" / "policies", policies)
    (tmp_path / "hook.secret").write_bytes(secret)
    add_policy = with_policy(policies)

    def mutate(raw: dict[str, Any]) -> None:
        add_policy(raw)
        raw["policy"]["approval_webhook"] = {
            "url": url,
            "secret_file": str(tmp_path / "hook.secret"),
            "timeout_seconds": 2,
        }

    return make_config(UNIT_ISSUER, mutate)


@pytest.fixture
def config(tmp_path: Path, receiver: Receiver):  # type: ignore[no-untyped-def]
    return webhook_config(tmp_path, receiver.url)


def ask(exchange: Any) -> str:
    resp = exchange(audience=PAY, scope="pay:refund", task_id="refund-1", purpose="refund")
    body = resp.get_json()
    assert body["error"] == "authorization_pending", body
    return str(body["approval_id"])


def notices(svc: Any) -> list[dict[str, Any]]:
    return [e for e in stream_events(svc) if e["event"] == "approval.notify"]


def test_the_url_must_be_https_or_loopback() -> None:
    assert webhook_url_problem("https://hooks.acme.example/errand") == ""
    assert webhook_url_problem("http://127.0.0.1:9000/x") == ""
    assert webhook_url_problem("http://localhost/x") == ""
    assert "https" in webhook_url_problem("http://hooks.acme.example/x")
    assert "credentials" in webhook_url_problem("https://u:p@hooks.acme.example/x")
    assert webhook_url_problem("/relative") != ""


def test_a_bad_webhook_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be https"):
        webhook_config(tmp_path, "http://hooks.acme.example/x")
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        webhook_config(tmp_path, "https://hooks.acme.example/x", secret=b"short")


def test_a_new_approval_is_posted_signed_and_audited(svc, exchange, receiver) -> None:
    approval_id = ask(exchange)
    job = Job.fetch(f"approval-notice-{approval_id}", connection=svc.rq_redis)
    assert job.func_name == "workers.approval_webhook.notify_approvers"
    assert job.args == (approval_id,)

    assert deliver(svc, approval_id, post_json) == {"delivered": True, "status": 204}
    [(headers, body)] = receiver.posts
    expected = hmac.new(
        SECRET, headers["X-Errand-Timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert headers["X-Errand-Signature"] == "sha256=" + expected
    sent = json.loads(body)
    assert sent["approval_id"] == approval_id and sent["scopes"] == ["pay:refund"]
    assert sent["identity"] == "acme-deploy" and "token" not in body.decode().lower()
    assert notices(svc)[-1]["outcome"] == "delivered"


def test_a_failed_post_is_audited_and_nothing_else_changes(svc, exchange, receiver) -> None:
    approval_id = ask(exchange)
    receiver.status = 500
    assert deliver(svc, approval_id, post_json)["why"] == "http_500"
    assert notices(svc)[-1]["outcome"] == "failed"
    assert svc.approvals.get(approval_id).state == "pending"


def test_an_unreachable_receiver_is_audited(svc, exchange, tmp_path) -> None:
    approval_id = ask(exchange)
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    svc.config = webhook_config(tmp_path, url)
    result = deliver(svc, approval_id, post_json)
    assert result["delivered"] is False and result["why"] == "ConnectionError"
    assert notices(svc)[-1]["reason"] == "ConnectionError"


def test_an_enqueue_failure_never_blocks_the_exchange(svc, exchange) -> None:
    class Broken:
        def schedule_approval_notice(self, approval_id: str) -> None:
            raise OSError("queue down")

    svc.jobs = Broken()
    ask(exchange)  # still authorization_pending
    [notice] = notices(svc)
    assert (notice["outcome"], notice["reason"]) == ("error", "enqueue_failed")

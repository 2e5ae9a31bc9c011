"""The worker's one pure decision: when a buffered request is whole enough for the parser."""

from __future__ import annotations

import pytest

from broker.gunicorn_worker import MAX_BUFFERED_REQUEST, bytes_needed

HEAD = b"POST /token HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    ("extra", "body_length"),
    [
        (b"", 0),  # no body
        (b"Content-Length: 200\r\n", 200),
        (b"content-length:17\r\n", 17),
        (b"CONTENT-LENGTH: \t40 \r\n", 40),
        (b"Content-Length: 5\r\nContent-Length: 5\r\n", 5),  # repeated, same value
    ],
)
def test_the_whole_body_is_waited_for(extra: bytes, body_length: int) -> None:
    head = HEAD + extra + b"\r\n"
    assert bytes_needed(head) == len(head) + body_length


@pytest.mark.parametrize(
    "extra",
    [
        b"Transfer-Encoding: chunked\r\n",
        b"Expect: 100-continue\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 1e3\r\n",
        b"Content-Length: 99999999999999\r\n",
        b"Content-Length: %d\r\n" % MAX_BUFFERED_REQUEST,
    ],
)
def test_the_thread_reads_the_rest_itself_under_the_deadline(extra: bytes) -> None:
    assert bytes_needed(HEAD + extra + b"\r\n") is None


def test_server_settings_defaults_and_refusals() -> None:
    from broker.settings import SettingsError, load_server_settings

    server = load_server_settings({})
    assert (server.web_workers, server.web_threads) == (3, 4)
    assert server.request_read_timeout_seconds == 10.0 and server.keepalive_seconds == 5
    assert (
        load_server_settings(
            {"ERRAND_REQUEST_READ_TIMEOUT_SECONDS": "2.5"}
        ).request_read_timeout_seconds
        == 2.5
    )
    for bad in (
        {"ERRAND_REQUEST_READ_TIMEOUT_SECONDS": "0"},
        {"ERRAND_REQUEST_READ_TIMEOUT_SECONDS": "nan"},
        {"ERRAND_REQUEST_READ_TIMEOUT_SECONDS": "-1"},
        {"ERRAND_WEB_THREADS": "0"},
        {"ERRAND_WEB_WORKERS": "0"},
        {"ERRAND_KEEPALIVE_SECONDS": "1.5"},
        {"ERRAND_KEEPALIVE_SECONDS": "-1"},
    ):
        with pytest.raises(SettingsError):
            load_server_settings(bad)


def test_gunicorn_uses_the_worker_class_and_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """config/gunicorn.conf.py as gunicorn reads it (a module of settings)."""
    import runpy
    from pathlib import Path

    monkeypatch.setenv("ERRAND_WEB_THREADS", "6")
    monkeypatch.setenv("ERRAND_KEEPALIVE_SECONDS", "3")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent-unused")
    conf = runpy.run_path(str(Path(__file__).resolve().parents[2] / "config" / "gunicorn.conf.py"))
    assert conf["worker_class"] == "broker.gunicorn_worker.ReadTimeoutWorker"
    assert conf["threads"] == 6 and conf["keepalive"] == 3


def test_the_gthread_internals_the_worker_relies_on_exist() -> None:
    """broker/gunicorn_worker.py extends gunicorn's gthread worker; a gunicorn upgrade that
    moves these fails here rather than in production (pyproject pins gunicorn 27.x)."""
    from gunicorn.http.unreader import Unreader
    from gunicorn.workers.gthread import TConn, ThreadWorker

    for name in (
        "enqueue_req",
        "finish_request",
        "murder_pending",
        "wait_for_and_dispatch_events",
        "handle_request",
        "_keepalive_after",
        "set_accept_enabled",
    ):
        assert callable(getattr(ThreadWorker, name, None)), name
    assert callable(getattr(Unreader, "take_buffered", None))
    assert callable(getattr(TConn, "init", None))

"""Driving the domain in process, without HTTP: an exchange straight into exchange_token(),
and the job queue drained by an RQ SimpleWorker in this process."""

from __future__ import annotations

from typing import Any

from rq import Queue, SimpleWorker

from broker.domain.exchange import exchange_token
from broker.domain.models import TOKEN_TYPE_JWT, ExchangeRequest, IssuedToken
from broker.domain.ports import Services
from broker.jobs import QUEUE_NAME
from tests.support.builders import DEPLOY_AUD


def exchange_request(token: str, **kw: Any) -> ExchangeRequest:
    """deploy:write at DEPLOY_AUD from 127.0.0.1 unless `kw` says otherwise."""
    fields: dict[str, Any] = {
        "subject_token": token,
        "subject_token_type": TOKEN_TYPE_JWT,
        "audiences": (DEPLOY_AUD,),
        "scopes": ("deploy:write",),
        "client_address": "127.0.0.1",
        "request_id": "it-req",
    }
    fields.update(kw)
    return ExchangeRequest(**fields)


def exchange(svc: Services, token: str, **kw: Any) -> IssuedToken:
    return exchange_token(exchange_request(token, **kw), svc)


def run_jobs(svc: Services) -> None:
    """Drain the errand queue with a SimpleWorker in burst mode (jobs run in this process)."""
    conn = svc.rq_redis
    queue = Queue(QUEUE_NAME, connection=conn)
    SimpleWorker([queue], connection=conn).work(burst=True)

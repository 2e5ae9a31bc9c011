"""notify_approvers(approval_id): POST a new approval to the configured webhook, signed,
with a timeout; one attempt, audited either way (broker/domain/approval_webhook.py)."""

from __future__ import annotations

import requests

from broker.domain.approval_webhook import Delivery, deliver
from workers.context import services


def post_json(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Delivery:
    try:
        with requests.Session() as http:
            http.trust_env = False  # the configured URL, never a proxy from the environment
            resp = http.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            )
    except requests.Timeout:
        return Delivery(error="timeout")
    except requests.RequestException as err:
        return Delivery(error=type(err).__name__)
    return Delivery(status=resp.status_code)


def notify_approvers(approval_id: str) -> dict[str, object]:
    return deliver(services(), approval_id, post_json)

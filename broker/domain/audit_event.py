"""ExchangeAudit: the one audit event of a token request.

The HTTP edge opens it before reading the form, so a request refused by the form layer is
audited too (as `token.request`); the exchange's steps complete it as they learn the issuer,
the identity and the grant (as `token.exchange`); it is recorded exactly once, by whoever
ends the request: domain/exchange_refusals.record_refusal for a refusal, the exchange's
write step for an issued token. It holds the SHA-256 of the token, never the token."""

from __future__ import annotations

from typing import Any

from broker.domain.models import ExchangeRequest, Grant, Identity, MatchRule, VerifiedSubject
from broker.domain.ports import AuditSink
from broker.errors import BrokerError
from broker.identity.verifier import token_sha256


class ExchangeAudit:
    __slots__ = ("_fields", "_recorded", "_token")

    def __init__(self, *, request_id: str, client_address: str, subject_token: str | None) -> None:
        self._fields: dict[str, Any] = {
            "event": "token.request",
            "request_id": request_id,
            "client_address": client_address,
            "token_sha256": None,
        }
        # Hashed once, when the event is read: by then a verified token has brought its
        # hash from the verifier, and a token refused earlier is hashed here.
        self._token = subject_token or None
        self._recorded = False

    @classmethod
    def of(cls, req: ExchangeRequest) -> ExchangeAudit:
        """For an exchange started without the HTTP edge (jobs, tests, benchmarks)."""
        return cls(
            request_id=req.request_id,
            client_address=req.client_address,
            subject_token=req.subject_token,
        )

    def __repr__(self) -> str:  # never the token
        return f"ExchangeAudit({self._fields.get('event')!r}, {self._fields.get('outcome')!r})"

    # -- what the steps learn --------------------------------------------------------------
    def begin(self, req: ExchangeRequest) -> None:
        self._fields.update(
            event="token.exchange",
            grant_type=req.grant_type,
            issuer=None,
            identity=None,
            task=req.task_id,
        )
        if req.purpose:
            self._fields["purpose"] = req.purpose

    def verified(self, subject: VerifiedSubject) -> None:
        self._fields["issuer"] = subject.issuer.id
        self._fields["token_sha256"] = subject.token_sha256
        self._fields["subject"] = str(subject.claims.get("sub", ""))[:256]
        self._fields.update(subject.context)  # workload binding: pod and node, CI run, SPIFFE ID

    def task(self, task_id: str) -> None:
        self._fields["task"] = task_id

    def matched(self, identity: Identity, rule: MatchRule) -> None:
        self._fields.update(
            identity=identity.id, rule=rule.id, owner=identity.owner, identity_type=identity.type
        )

    def policy(self, policies: tuple[str, ...], approval_id: str) -> None:
        """The runtime policies that permitted the request, and the approval if one was given."""
        if policies:
            self._fields["policies"] = list(policies)
        if approval_id:
            self._fields["approval_id"] = approval_id

    def issued(self, grant: Grant, now: float) -> None:
        self._fields.update(
            outcome="issued",
            jti=grant.jti,
            audience=list(grant.audiences),
            scope=" ".join(grant.scopes),
            exp=grant.exp,
            ts=now,
        )
        if grant.dpop_jkt:
            self._fields["dpop_jkt"] = grant.dpop_jkt  # the key the token is bound to

    def actor(self, actor: VerifiedSubject) -> None:
        """RFC 8693 delegation: the actor token's issuer and hash (domain/delegation.py); the
        subject token's hash stays `token_sha256`."""
        self._fields["actor_issuer"] = actor.issuer.id
        self._fields["actor_token_sha256"] = actor.token_sha256
        self._fields.update(actor.context)

    def chain(self, grant: Grant) -> None:
        """The hop's place in its chain: whom it acts for, the actors (newest first), its
        parent grant and depth."""
        self._fields.update(
            subject_identity=grant.subject_id,
            act=list(grant.actors),
            parent_jti=grant.parent,
            depth=grant.depth,
        )

    def delegating(self, subject_identity: str, parent_jti: str) -> None:
        """The subject token was ours: the chain it continues, known before the actor is."""
        self._fields.update(subject_identity=subject_identity, parent_jti=parent_jti)

    def denied(self, err: BrokerError, now: float) -> None:
        """The refusal and why (the reason, and for audit only its debug text and details)."""
        self._fields.update(
            ts=now,
            outcome="denied",
            error=err.error,
            reason=err.reason,
            description=err.description,
        )
        if err.debug:
            self._fields["debug"] = err.debug[:500]
        if err.details:
            self._fields["details"] = err.details

    # -- reading and recording -------------------------------------------------------------
    @property
    def client_address(self) -> str:
        return str(self._fields["client_address"])

    @property
    def request_id(self) -> str:
        return str(self._fields["request_id"])

    @property
    def identity(self) -> str | None:
        """The matched identity; None until (unless) one matched."""
        found = self._fields.get("identity")
        return str(found) if found else None

    @property
    def event(self) -> dict[str, Any]:
        if self._fields["token_sha256"] is None and self._token:
            self._fields["token_sha256"] = token_sha256(self._token)
        return dict(self._fields)

    def record(self, sink: AuditSink, *, stored: bool = False) -> None:
        """Write the event; `stored`: the stream already holds it, or must not (log only)."""
        if self._recorded:
            raise RuntimeError("a token request's audit event is recorded once")
        self._recorded = True
        sink.record(self.event, stored=stored)

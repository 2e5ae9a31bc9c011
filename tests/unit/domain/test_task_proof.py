"""Task proofs: signed and verified against the signing key; any change to a claim, another
key or another record type is refused; no proof while a grant is live; an existing proof is
kept; `errand audit verify-proof` exits 0, 1 or 2."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from broker.cli import main
from broker.domain.audit_hmac import jti_hmac
from broker.domain.task_proof import (
    PROOF_TYP,
    ProofIncomplete,
    StoredProof,
    TaskEnd,
    begin_proof,
    finish_proof,
    verify_proof,
)
from broker.tokens.evidence import EvidenceInvalid, sign_record
from broker.tokens.keyring import KeyRing
from tests.support.builders import make_key_dir

ISSUER = "https://errand.example"


class MemoryProofs:
    def __init__(self, end: TaskEnd | None) -> None:
        self.end = end
        self.covered: set[str] = set()
        self.live: list[str] = []
        self.saved: dict[str, StoredProof] = {}

    def task_end(self, task_id: str) -> TaskEnd | None:
        return self.end

    def cover(self, task_id: str, hmacs: Sequence[str], *, ttl_seconds: int) -> list[str]:
        self.covered.update(hmacs)
        return sorted(self.covered)

    def live_grants(self, task_id: str) -> list[str]:
        return list(self.live)

    def save(self, task_id: str, proof: StoredProof, *, kid: str, ttl_seconds: int) -> bool:
        if task_id in self.saved:
            return False
        self.saved[task_id] = proof
        return True

    def find(self, task_id: str) -> StoredProof | None:
        return self.saved.get(task_id)


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    return KeyRing.from_dir(make_key_dir(tmp_path_factory.mktemp("keys")))


def prove(keyring: KeyRing, proofs: MemoryProofs, jtis: list[str]) -> dict[str, Any] | None:
    end = begin_proof("t1", jtis, proofs)
    assert end is not None
    return finish_proof(
        "t1",
        end,
        proofs,
        keyring=keyring,
        issuer=ISSUER,
        now=1_800_000_100,
        epoch=3,
        skew_seconds=60,
    )


def test_signed_proof_verifies_and_lists_every_grant(keyring: KeyRing) -> None:
    proofs = MemoryProofs(TaskEnd(state="completed", ended_at=1_800_000_000, ttl_seconds=3600))
    claims = prove(keyring, proofs, ["j1", "j2", "hop1"])
    assert claims is not None
    jws = proofs.saved["t1"].jws
    got = verify_proof(jws, keyring.jwks(), ISSUER)
    assert got["grants"] == sorted(jti_hmac(j) for j in ["j1", "j2", "hop1"])
    # The proof names grants only by HMAC (hex): no plain jti in its claims. (Not a substring
    # check on the compact JWS: "j1" turns up in base64url text by chance.)
    assert not {"j1", "j2", "hop1"} & set(json.dumps(got).replace('"', " ").split())
    assert "hop1" not in json.dumps(got) and got["grant_count"] == 3
    assert (got["state"], got["ended_at"], got["dead_at"]) == (
        "completed",
        1_800_000_000,
        1_800_000_100,
    )
    assert (got["epoch"], got["feed_cutoff"]) == (3, 1_800_000_060)
    # Idempotent: a second run keeps the first proof.
    assert prove(keyring, proofs, []) is None


def test_retried_clean_up_still_lists_what_the_first_attempt_revoked(keyring: KeyRing) -> None:
    proofs = MemoryProofs(TaskEnd(state="failed", ended_at=1_800_000_000, ttl_seconds=60))
    begin_proof("t1", ["j1", "j2"], proofs)  # first attempt: revoked both, then died
    claims = prove(keyring, proofs, [])  # the retry finds the index empty
    assert claims is not None and claims["grant_count"] == 2


def test_no_proof_while_a_grant_is_live_or_the_task_has_not_ended(keyring: KeyRing) -> None:
    proofs = MemoryProofs(TaskEnd(state="cancelled", ended_at=1, ttl_seconds=60))
    proofs.live = ["j1"]
    with pytest.raises(ProofIncomplete):
        prove(keyring, proofs, ["j1"])
    assert proofs.saved == {}
    assert begin_proof("t1", ["j1"], MemoryProofs(None)) is None


def _tamper(jws: str) -> str:
    head, body, sig = jws.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["grant_count"] = claims["grant_count"] - 1
    claims["grants"] = claims["grants"][1:]
    raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{raw}.{sig}"


def test_tampered_or_foreign_or_retyped_proof_refused(keyring: KeyRing, tmp_path: Path) -> None:
    proofs = MemoryProofs(TaskEnd(state="completed", ended_at=5, ttl_seconds=60))
    prove(keyring, proofs, ["j1", "j2"])
    jws = proofs.saved["t1"].jws
    with pytest.raises(EvidenceInvalid):
        verify_proof(_tamper(jws), keyring.jwks(), ISSUER)
    other = KeyRing.from_dir(make_key_dir(tmp_path))
    with pytest.raises(EvidenceInvalid):
        verify_proof(jws, other.jwks(), ISSUER)
    with pytest.raises(EvidenceInvalid):
        verify_proof(jws, keyring.jwks(), "https://other.example")
    # A checkpoint (or any record of another typ) is never taken for a proof.
    record = sign_record({"jti": "x", "iat": 1, "task": "t1"}, keyring, ISSUER)
    with pytest.raises(EvidenceInvalid):
        verify_proof(record, keyring.jwks(), ISSUER)
    assert PROOF_TYP.endswith("+jwt")


def test_verify_proof_cli_exit_status(keyring: KeyRing, tmp_path: Path, capsys: Any) -> None:
    proofs = MemoryProofs(TaskEnd(state="completed", ended_at=5, ttl_seconds=60))
    prove(keyring, proofs, ["j1"])
    stored = proofs.saved["t1"]
    good = tmp_path / "proof.json"
    saved = {
        "task": "t1",
        "issuer": ISSUER,
        "proof": stored.jws,
        "jwks": {"keys": [stored.public_jwk]},
    }
    good.write_text(json.dumps(saved))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keyring.jwks()))
    assert main(["audit", "verify-proof", str(good)]) == 0
    assert main(["audit", "verify-proof", str(good), "--jwks", str(jwks)]) == 0
    assert "OK: every token of task t1" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**saved, "proof": _tamper(stored.jws)}))
    assert main(["audit", "verify-proof", str(bad)]) == 1
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    assert main(["audit", "verify-proof", str(junk)]) == 2
    assert main(["audit", "verify-proof", str(tmp_path / "missing.json")]) == 2

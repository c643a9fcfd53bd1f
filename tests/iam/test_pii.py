"""PII: AES-GCM / SM4-GCM at rest, keyed blind index, masks, audited unmasked reads (both profiles)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from central.app import create_app
from central.iam.pii import PiiError, mask_id_card, mask_phone, pii_cipher
from tests.helpers import auth, token_for
from tests.iam.conftest import audit_column, dump, make_hub

PHONE = "13812345678"
ID_CARD = "11010519491231002X"


def test_cipher_roundtrip_tamper_and_index(tmp_path: Path, profile: str) -> None:
    hub = make_hub(tmp_path, profile)
    c = pii_cipher(hub)
    tok = c.encrypt(ID_CARD)
    assert tok.startswith("sm4:" if profile == "gm" else "aes:")
    assert ID_CARD not in tok and c.decrypt(tok) == ID_CARD
    assert c.encrypt(ID_CARD) != tok  # random nonce: equal values do not look equal at rest
    raw = bytearray(tok.encode())
    raw[-3] = ord("A") if raw[-3] != ord("A") else ord("B")
    with pytest.raises(PiiError, match="token"):
        c.decrypt(raw.decode())
    with pytest.raises(PiiError, match="token"):
        c.decrypt("plain-text")
    # Index: deterministic, normalised, separated by kind, and keyed (another hub's key differs).
    assert c.blind_index("id_card", ID_CARD) == c.blind_index("id_card", ID_CARD.lower())
    assert c.blind_index("id_card", ID_CARD) != c.blind_index("phone", ID_CARD)
    other = pii_cipher(make_hub(tmp_path / "other", profile))
    assert other.blind_index("id_card", ID_CARD) != c.blind_index("id_card", ID_CARD)
    keys = list(hub.settings.keys_dir.glob("pii-*.key"))
    assert keys and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)


def test_masks() -> None:
    assert mask_phone(PHONE) == "138****5678"
    assert mask_id_card(ID_CARD) == "110105********002X"
    assert mask_phone(None) is None and mask_id_card("") == ""
    assert mask_phone("12345") == "*****"


def test_masked_unless_pii_read_and_unmasked_read_is_audited(tmp_path: Path, profile: str) -> None:
    hub = make_hub(tmp_path, profile)
    admin = token_for(hub, "alice", "district_admin", "/city/district-a")  # "*" includes pii.read
    aud = token_for(hub, "audrey", "auditor", "/city/district-a")  # auditor excludes pii.read
    with TestClient(create_app(hub=hub, start_bridge=False)) as c:
        r = c.post("/api/v1/iam/users", headers=auth(admin),
                   json={"username": "pat", "password": "Some-Pass-2024", "org": "/city/district-a",
                         "phone": PHONE, "id_card": ID_CARD})
        assert r.status_code == 201, r.text
        assert r.json()["phone"] == "138****5678"
        bad = c.post("/api/v1/iam/users", headers=auth(admin),
                     json={"username": "pat2", "password": "Some-Pass-2024", "org": "/city/district-a",
                           "id_card": "12345"})
        assert bad.status_code == 422 and "id_card" in bad.text
        # At rest: ciphertext only.
        rows = dump(hub)
        assert "pat" in rows and PHONE not in rows and ID_CARD not in rows

        def pii_reads() -> int:
            return audit_column(hub, "action").count("pii.read")

        masked = c.get("/api/v1/iam/users/pat", headers=auth(admin)).json()
        assert masked["phone"] == "138****5678" and masked["id_card"] == "110105********002X"
        assert pii_reads() == 0
        plain = c.get("/api/v1/iam/users/pat?unmask=true", headers=auth(admin)).json()
        assert plain["phone"] == PHONE and plain["id_card"] == ID_CARD
        assert pii_reads() == 2
        reads = [(a, t) for a, t, act in zip(audit_column(hub, "actor"), audit_column(hub, "target"),
                                             audit_column(hub, "action"), strict=True) if act == "pii.read"]
        assert reads[0] == ("alice", "user:pat")
        denied = c.get("/api/v1/iam/users/pat?unmask=true", headers=auth(aud)).json()
        assert denied["phone"] == "138****5678" and pii_reads() == 2
        # Exact lookup through the blind index.
        found = c.get(f"/api/v1/iam/users?phone={PHONE}", headers=auth(aud)).json()
        assert [u["username"] for u in found] == ["pat"]
        assert c.get("/api/v1/iam/users?phone=13800000000", headers=auth(aud)).json() == []

"""SM2 through protocol.signing (native, tongsuopy) against gmssl as the oracle: signatures made by one
verify with the other in both directions over many random keys and messages (same raw r || s and key
formats, same default user id 1234567812345678 and Z value), and bad signatures or keys are refused."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from gmssl import sm2 as gm

from protocol import signing

N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
ROOT = Path(__file__).resolve().parents[2]


def _oracle(private: bytes | None, public: bytes) -> gm.CryptSM2:
    # gmssl's constructor lstrip()s "04" from the public key hex (mangling keys that start with 0/4).
    c = gm.CryptSM2(private_key=private.hex() if private else "", public_key="")
    c.public_key = public.hex()
    return c


def gm_sign(private: bytes, public: bytes, msg: bytes) -> bytes:
    c = _oracle(private, public)
    while True:  # gmssl returns None for the rare k that gives r = 0, r + k = n or s = 0
        sig = c.sign_with_sm3(msg, f"{secrets.randbelow(N - 1) + 1:064x}")
        if sig:
            return bytes.fromhex(sig)


def gm_verify(public: bytes, msg: bytes, sig: bytes) -> bool:
    return bool(_oracle(None, public).verify_with_sm3(sig.hex(), msg))


def gm_keypair() -> tuple[bytes, bytes]:
    """A key made the way the old gmssl-backed code made them (d, then d*G through gmssl)."""
    c = gm.CryptSM2(private_key="", public_key="")
    d = secrets.randbelow(N - 2) + 1
    return d.to_bytes(32, "big"), bytes.fromhex(c._kg(d, c.ecc_table["g"]))


def messages(n: int) -> list[bytes]:
    fixed = [b"", b"\x00", b"\x00" * 64, "城市码".encode(), b"x" * 1000]
    return fixed + [os.urandom(secrets.randbelow(300)) for _ in range(n - len(fixed))]


def as_private(raw: bytes, public: bytes) -> signing.PrivateKey:
    return signing.PrivateKey(alg="sm2", kid=signing.key_id("sm2", public), raw=raw, public_raw=public)


def test_formats_are_raw() -> None:
    k = signing.generate("sm2")
    sig = k.sign(b"m")
    assert (len(k.raw), len(k.public_raw), len(sig)) == (32, 64, 64)
    assert k.kid.startswith("sm") and k.public.verify(b"m", sig)


def test_native_signatures_verify_with_gmssl() -> None:
    msgs = messages(40)
    keys = [signing.generate("sm2") for _ in range(8)]
    # Keys whose x starts with a 0 nibble or with 0x04 (what broke gmssl's hex handling).
    while not any(k.public_raw[0] < 0x10 for k in keys):
        keys.append(signing.generate("sm2"))
    for i, msg in enumerate(msgs):
        for k in (keys[i % len(keys)], *(k for k in keys if k.public_raw[0] < 0x10)):
            sig = k.sign(msg)
            assert gm_verify(k.public_raw, msg, sig), (k.public_raw.hex(), msg.hex())
            assert not gm_verify(k.public_raw, msg + b"!", sig)


def test_gmssl_signatures_verify_natively() -> None:
    msgs = messages(40)
    pairs = [gm_keypair() for _ in range(8)]
    for i, msg in enumerate(msgs):
        priv, pub = pairs[i % len(pairs)]
        sig = gm_sign(priv, pub, msg)
        key = signing.PublicKey("sm2", signing.key_id("sm2", pub), pub)
        assert key.verify(msg, sig), (pub.hex(), msg.hex())
        assert not key.verify(msg + b"!", sig)
        # ...and a key made by gmssl signs natively in a way gmssl accepts (old key files keep working).
        assert gm_verify(pub, msg, as_private(priv, pub).sign(msg))


def test_wrong_signatures_refused_by_both() -> None:
    k = signing.generate("sm2")
    other = signing.generate("sm2")
    msg = b"trust list v7"
    sig = k.sign(msg)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    enc = lambda a, b: a.to_bytes(32, "big") + b.to_bytes(32, "big")  # noqa: E731
    bad = {
        "bit flip in r": bytes([sig[0] ^ 1]) + sig[1:],
        "bit flip in s": sig[:63] + bytes([sig[63] ^ 0x80]),
        "r, s swapped": sig[32:] + sig[:32],
        "r + s = n": enc(r, N - r),
        "zeros": bytes(64),
        "r = 0": enc(0, s),
        "s = 0": enc(r, 0),
        "other key's signature": other.sign(msg),
    }
    for why, b in bad.items():
        assert not k.public.verify(msg, b), why
        assert not gm_verify(k.public_raw, msg, b), why
    for length in (0, 63, 65, 72):  # DER or truncated forms are not our format
        assert not k.public.verify(msg, (sig + sig)[:length])
    # Out of range halves that gmssl's arithmetic would reduce: refused natively, one encoding per signature.
    assert not k.public.verify(msg, enc(N, s)) and not k.public.verify(msg, enc(r, N))
    assert not other.public.verify(msg, sig)


def test_off_curve_and_malformed_public_keys_refused() -> None:
    k = signing.generate("sm2")
    msg = b"m"
    sig = k.sign(msg)
    x, y = int.from_bytes(k.public_raw[:32], "big"), int.from_bytes(k.public_raw[32:], "big")
    enc = lambda a, b: a.to_bytes(32, "big") + b.to_bytes(32, "big")  # noqa: E731
    bad_keys = {
        "y + 1 (off the curve)": enc(x, (y + 1) % P),
        "x + p (coordinate >= p)": enc(x + P, y) if x + P < 2**256 else enc(P, y),
        "point at infinity / zeros": bytes(64),
        "random bytes": os.urandom(64),
        "short": k.public_raw[:63],
        "long": k.public_raw + b"\x00",
        "the negated point (on the curve, another key)": enc(x, P - y),
    }
    for why, raw in bad_keys.items():
        assert not signing.PublicKey("sm2", "smbad", raw).verify(msg, sig), why
    assert signing.PublicKey("sm2", "smok", k.public_raw).verify(msg, sig)


@pytest.mark.parametrize("d", [0, N - 1, N, 2**256 - 1], ids=["0", "n-1", "n", "2^256-1"])
def test_out_of_range_private_keys_refused(d: int) -> None:
    """d = n-1 makes 1 + d non-invertible (Tongsuo would loop forever); d >= n or 0 is not a key."""
    pub = signing.generate("sm2").public_raw
    with pytest.raises(ValueError, match="priv"):
        as_private(d.to_bytes(32, "big"), pub).sign(b"m")


def test_signing_at_run_time_does_not_use_gmssl() -> None:
    """gmssl is only the tests' oracle: a gm-profile process signs, verifies and hashes with it unimportable."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'gmssl': raise ImportError('gmssl blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from protocol import signing\n"
        "k = signing.generate('sm2')\n"
        "s = k.sign(b'abc')\n"
        "assert k.public.verify(b'abc', s) and not k.public.verify(b'abd', s)\n"
        "assert len(signing.digest(b'abc', 'gm')) == 32\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]

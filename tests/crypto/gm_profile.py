"""The domestic-crypto profile (国产化: SM2/SM3/SM4) for tests written for intl, without editing them.

As a plugin it runs whole suites under gm:

    .venv/bin/python -m pytest -p tests.crypto.gm_profile tests/scanner tests/codes tests/iam

Every hub is built with `security.crypto_profile: gm`, and `signing.generate()` makes SM2 keys unless a test
names another algorithm, so test cities, the code authority and the audit/PII keys are all gm. Tests that
assert an intl-only detail (an `ED` key id, an `aes:` token, `"alg": "ed25519"`) are expected to differ.
`use_gm(monkeypatch)` does the same for one test (tests/crypto/test_gm_*.py)."""

from __future__ import annotations

from typing import Any

import pytest

from central.hub import Hub
from protocol import signing


def _gm_init(init: Any) -> Any:
    def gm_init(self: Hub, settings: Any, *args: Any, **kwargs: Any) -> None:
        settings.security.crypto_profile = "gm"
        init(self, settings, *args, **kwargs)

    return gm_init


def use_gm(monkeypatch: pytest.MonkeyPatch) -> None:
    """gm for the rest of this test: hubs built with crypto_profile gm, SM2 as signing.generate's default."""
    monkeypatch.setattr(Hub, "__init__", _gm_init(Hub.__init__))
    # The default argument itself: City's default_factory=signing.generate holds the function object.
    monkeypatch.setattr(signing.generate, "__defaults__", ("sm2", None))


def pytest_configure(config: pytest.Config) -> None:  # only when loaded with -p tests.crypto.gm_profile
    Hub.__init__ = _gm_init(Hub.__init__)  # type: ignore[method-assign]
    signing.generate.__defaults__ = ("sm2", None)

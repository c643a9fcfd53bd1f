"""Run existing tests under the domestic-crypto profile (国产化: SM2/SM3/SM4) without editing them:

    .venv/bin/python -m pytest -p tests.crypto.gm_profile tests/scanner tests/codes tests/iam

Every hub is built with `security.crypto_profile: gm`, and `signing.generate()` makes SM2 keys unless a test
names another algorithm, so the scanner's test cities, the code authority and the audit/PII keys are all gm.
Tests that assert an intl-only detail (an `ED` key id, an `aes:` token) for an explicit "intl" parameter
are expected to differ; everything else must pass as it does under intl."""

from __future__ import annotations

from typing import Any

from central.hub import Hub
from protocol import signing

_hub_init = Hub.__init__


def _gm_hub_init(self: Hub, settings: Any, *args: Any, **kwargs: Any) -> None:
    settings.security.crypto_profile = "gm"
    _hub_init(self, settings, *args, **kwargs)


Hub.__init__ = _gm_hub_init  # type: ignore[method-assign]
# The default argument itself: dataclass default_factory=signing.generate holds the function object.
signing.generate.__defaults__ = ("sm2", None)

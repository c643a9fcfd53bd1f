"""The code authority's journeys under the gm profile: the same tests as intl (imported from tests/codes,
not copied) on a hub whose crypto_profile is gm (SM2 keys, SM3 hashes): identity checks and city fields,
bad-input verdicts, app keys, batch key rotation with revocations, and offline (terminal) and online (hub)
verdicts agreeing on mutated real codes."""

from __future__ import annotations

import pytest

from tests.codes.conftest import cclient, chub, city  # noqa: F401 - fixtures
from tests.codes.test_citycode import test_offline_and_online_verdicts_agree_on_mutations  # noqa: F401
from tests.codes.test_rules import (
    test_app_keys_issue_and_verify_one_scene,  # noqa: F401
    test_batch_rotation_and_revocations,  # noqa: F401
    test_city_fields_immutable_and_identity_checked,  # noqa: F401
    test_online_verdicts_for_bad_input,  # noqa: F401
)
from tests.crypto.gm_profile import use_gm


@pytest.fixture
def profile() -> str:  # what tests/codes/conftest.py's chub builds its hub with
    return "gm"


@pytest.fixture(autouse=True)
def gm(monkeypatch: pytest.MonkeyPatch) -> None:
    use_gm(monkeypatch)


def test_the_hub_here_is_gm(chub: object) -> None:  # noqa: F811 - the imported fixture
    from central.codes.service import service_of

    assert chub.settings.security.crypto_profile == "gm"  # type: ignore[attr-defined]
    assert service_of(chub).profile == "gm"  # type: ignore[arg-type]

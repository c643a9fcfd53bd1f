"""The scan terminal's journeys under the gm profile: the same tests as intl (imported from tests/scanner,
not copied), with SM2 city roots and department keys and a gm hub: offline verdicts, tampering, revocation,
rollback and forged lists, fail-closed lists, real QR images through `citybrain edge verify`, and codes
issued by a real gm hub reaching a terminal over a real mosquitto."""

from __future__ import annotations

import pytest

from protocol import signing
from tests.crypto.gm_profile import use_gm
from tests.scanner.helpers import City
from tests.scanner.test_cli import (
    setup,  # noqa: F401 - fixture
    test_image_with_two_codes_one_revoked,  # noqa: F401
    test_payload_valid_and_invalid,  # noqa: F401
)
from tests.scanner.test_fail_closed import (
    test_floor_survives_deleted_or_corrupted_files,  # noqa: F401
    test_stale_list_rejects_or_warns,  # noqa: F401
    test_tampered_list_at_boot_fails_closed_and_keeps_the_floor,  # noqa: F401
)
from tests.scanner.test_hub_e2e import (
    live_hub,  # noqa: F401 - fixture
    test_hub_issued_codes_verified_offline,  # noqa: F401
)
from tests.scanner.test_verify import (
    city,  # noqa: F401 - fixture
    test_altered_byte_is_bad_signature,  # noqa: F401
    test_expired_and_clock_skew,  # noqa: F401
    test_reboot_without_network_still_verifies,  # noqa: F401
    test_revoked_after_sync,  # noqa: F401
    test_rolled_back_and_forged_lists_refused,  # noqa: F401
    test_single_use_accepted_once_even_after_reboot,  # noqa: F401
    test_unknown_department_key_and_wrong_system,  # noqa: F401
    test_valid_code_passes_offline,  # noqa: F401
)


@pytest.fixture(autouse=True)
def gm(monkeypatch: pytest.MonkeyPatch) -> None:
    use_gm(monkeypatch)


def test_the_cities_here_are_sm2(city: City) -> None:  # noqa: F811 - the imported fixture
    assert (city.root.alg, city.dept.alg, signing.generate().alg) == ("sm2", "sm2", "sm2")
    assert city.code().kid.lower().startswith("sm")

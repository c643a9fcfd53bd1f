"""Demo seed (`citybrain hub demo`): a registered clinic, a health department with an approved scene,
two issued codes (one revoked) written as PNGs for the scan terminal."""

from __future__ import annotations

import base64
from pathlib import Path

from central.hub import Hub

DEPT = "DEMOHEALTH"
ORG = "/city/health"


def seed(hub: Hub, demo_dir: Path) -> list[str]:
    from central.codes.routes import qr_image
    from central.codes.service import service_of
    from central.iam.service import service_of as iam_of
    from central.registry import service as registry

    codes = service_of(hub)
    if codes.department_exists(DEPT):
        return [f"Codes:      department {DEPT} with an approved scene (GET /api/v1/codes/issued)"]
    iam_of(hub).ensure_org_chain(ORG, actor="demo")
    actor = registry.SystemActor("system:demo")
    clinic = registry.register(hub, actor, {
        "type": "place", "region": "310101", "name": "Demo community clinic", "address": "1 Demo Road",
        "external_key": "demo:clinic-1", "grid": "wtw3sjq", "org": ORG,
    })
    codes.register_department("system:demo", DEPT, "Demo health department", ORG)
    codes.import_duties("system:demo", [{"dept_id": DEPT, "scene_type": "clinic.entry", "description": "clinics"}])
    app = codes.apply("system:demo", DEPT, "Clinic entry", "clinic.entry", "static", "place",
                      "entry to the community clinic", True, "Y")
    # Maker-checker: the demo files as one system actor and approves as another.
    codes.decide("system:demo-checker", int(app["id"]), True, code_system="HC")
    issued = codes.issue_batch("system:demo", int(app["id"]), [{"identity_id": clinic["id"]}] * 2)
    codes.revoke_code("system:demo", issued[1]["serial"], "demo: a revoked pass")
    # The demo moves these into the terminal's inbox once the terminal has synced its lists.
    inbox = demo_dir / "samples" / "codes"
    inbox.mkdir(parents=True, exist_ok=True)
    for c, label in zip(issued, ("valid", "revoked"), strict=True):
        (inbox / f"{label}-{c['serial']}.png").write_bytes(base64.b64decode(qr_image(c["text"], "png")["png_b64"]))
    return [
        f"Registry:   place {clinic['id']} (GET /api/v1/registry/entities/{clinic['id']})",
        f"Codes:      scene 'Clinic entry' of {DEPT}; codes {issued[0]['serial']} (valid) and"
        f" {issued[1]['serial']} (revoked), PNGs in {inbox}, fed to the scan terminal",
        "Scans:      GET /api/v1/codes/supervision (the terminal's verdicts arrive as scan batches)",
    ]

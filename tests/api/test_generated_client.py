"""A client generated from the hub's own OpenAPI document (openapi-python-client, as a department's
business subsystem would build one) drives the journey register an entity -> apply -> approve -> issue ->
verify against a real uvicorn hub on loopback (issue 16). Nothing here is hand-written HTTP: every call goes
through the generated functions and every answer is a generated model."""

from __future__ import annotations

import base64
import importlib
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from PIL import Image
from pyzbar.pyzbar import ZBarSymbol
from pyzbar.pyzbar import decode as zbar_decode

from central.hub import Hub
from tests.helpers import serve, token_for
from tests.registry.conftest import id_card

PACKAGE = "hub_client"
# What the generator may skip: answers that are not JSON (the feeds' JSON Lines, case snapshots, recordings) and the
# dialer's YAML template upload (its body is YAML only). Anything else it could not parse is a hole in the
# contract.
NOT_JSON = ("Unsupported content_type application/x-ndjson", "Unsupported content_type image/jpeg",
            "Unsupported content_type image/png, image/svg+xml",
            "Unsupported content type application/yaml", "Unsupported content_type audio/wav")
YAML_ONLY = ("POST /api/v1/dialer/templates/import",)


def generate(spec: bytes, where: Path) -> list[str]:
    """Generate the client package into `where/out`; what the generator could not turn into code, bar the
    skips above."""
    (where / "openapi.json").write_bytes(spec)
    (where / "config.yaml").write_text(f"project_name_override: {PACKAGE}\npackage_name_override: {PACKAGE}\n"
                                       "post_hooks: []\n")
    exe = Path(sys.executable).with_name("openapi-python-client")
    run = subprocess.run([str(exe), "generate", "--path", "openapi.json", "--output-path", "out", "--meta", "none",
                          "--config", "config.yaml"], cwd=where, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    complaints = []
    for line in (ln.strip() for ln in (run.stdout + run.stderr).splitlines()):
        if line.startswith("WARNING parsing"):
            # a header; what follows says why. An endpoint left out is a complaint unless listed above.
            if "will not be generated" in line and not any(op in line for op in YAML_ONLY):
                complaints.append(line)
        elif line.startswith(("Unable to parse", "Could not find reference", "Attempted to generate duplicate")):
            complaints.append(line)
        elif line.startswith("Cannot parse") and not any(t in line for t in NOT_JSON):
            complaints.append(line)
    return complaints


@pytest.fixture
def client_pkg(tmp_path: Path, hub: Hub) -> Iterator[tuple[ModuleType, str]]:
    with serve(hub) as url:
        spec = httpx.get(f"{url}/api/v1/openapi.json", timeout=30).content
        complaints = generate(spec, tmp_path)
        assert complaints == []
        # the package sits directly in out/ (--meta none); import it as `hub_client`
        sys.path.insert(0, str(tmp_path))
        (tmp_path / "out").rename(tmp_path / PACKAGE)
        try:
            yield importlib.import_module(PACKAGE), url
        finally:
            sys.path.remove(str(tmp_path))
            for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
                del sys.modules[name]


def call(pkg: ModuleType, endpoint: str, client: Any, **kw: Any) -> Any:
    """`pkg.api.<capability>.<operation>.sync_detailed(...)`: the parsed answer, its status checked."""
    cap, _ = endpoint.split("_", 1)
    mod = importlib.import_module(f"{PACKAGE}.api.{cap}.{endpoint}")
    return mod.sync_detailed(client=client, **kw)


def test_generated_client_drives_the_journey(client_pkg: tuple[ModuleType, str], hub: Hub) -> None:
    pkg, url = client_pkg
    m = importlib.import_module(f"{PACKAGE}.models")
    AuthenticatedClient = importlib.import_module(f"{PACKAGE}.client").AuthenticatedClient
    admin = AuthenticatedClient(base_url=url, token=token_for(hub, "cityadmin", role="city_admin", org="/city"))
    issuer = AuthenticatedClient(base_url=url, token=token_for(hub, "nurse", role="department_issuer",
                                                               org="/city/health"))

    def ok(r: Any, status: int = 200) -> Any:
        assert r.status_code == status, r.content
        assert not isinstance(r.parsed, m.Problem), r.parsed
        return r.parsed

    # set-up by the city admin: a department and its duty catalogue
    dept = ok(call(pkg, "codes_register_department", admin,
                   body=m.DepartmentIn(id="HEALTH", name="Health", org="/city/health")), 201)
    assert dept.id == "HEALTH"
    ok(call(pkg, "codes_import_duties", admin,
            body=m.CodesImportDutiesJsonDutiesIn(rows=[m.CodesImportDutiesJsonDutiesInDutyRow(
                dept_id="HEALTH", scene_type="clinic.pass", description="clinics")])))

    # 1. register an entity
    entity = ok(call(pkg, "registry_register", admin,
                     body=m.EntityIn(type_=m.EntityInType("person"), region="330106", name="Zhang San",
                                    external_key=id_card(7))), 201)
    assert entity.type_ == "person" and entity.status == "active"

    # 2. the department applies for a scene
    app = ok(call(pkg, "codes_apply", issuer, body=m.ApplicationIn(
        dept_id="HEALTH", scene_name="Clinic pass", scene_type="clinic.pass",
        code_type=m.ApplicationInCodeType("static"), entity_type=m.ApplicationInEntityType("person"),
        purpose="entry to clinics", share_commitment=True, validity="Y")), 201)
    assert app.status == "pending"

    # 3. whoever applied may not approve (the refusal is a typed problem); the city admin approves
    refused = call(pkg, "codes_decide", issuer, app_id=app.id, body=m.DecisionIn(approve=True, code_system="HC"))
    assert refused.status_code == 403 and isinstance(refused.parsed, m.Problem)
    assert refused.parsed.status == 403 and refused.parsed.type_.startswith("urn:citybrain:problem:")
    decided = ok(call(pkg, "codes_decide", admin, app_id=app.id, body=m.DecisionIn(approve=True, code_system="HC")))
    assert decided.status == "approved" and decided.code_system == "HC"

    # 4. issue a code to the entity: its PNG holds the code's text
    issued = ok(call(pkg, "codes_issue", issuer, body=m.IssueIn(application_id=app.id, identity_id=entity.id)), 201)
    (sym,) = zbar_decode(Image.open(io.BytesIO(base64.b64decode(issued.png_b64))), symbols=[ZBarSymbol.QRCODE])
    assert sym.data.decode() == issued.text

    # 5. verify it
    verdict = ok(call(pkg, "codes_verify", issuer, body=m.VerifyIn(text=issued.text)))
    assert verdict.verdict == "valid" and verdict.entity.id == entity.id

    # every answer above came back as a named model of the contract, not an untyped bag
    for answer in (dept, entity, app, decided, issued, verdict):
        assert not type(answer).__name__.endswith("Response"), type(answer).__name__

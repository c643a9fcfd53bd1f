"""The layers the conventions set: no FastAPI/Starlette outside the HTTP modules, capabilities wired from
one explicit list, hook names checked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import central
from central import capabilities
from central.hub import HOOK_NAMES, Hooks

ROOT = Path(central.__file__).parent
# The HTTP side: routes, the app factory, shared route dependencies, the error handler, the request-id and
# access-log middleware and iam's authentication dependencies and middleware.
HTTP_MODULES = {"app.py", "deps.py", "errors.py", "observe_http.py", "iam/deps.py", "iam/middleware.py"}


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_no_service_store_or_hub_module_imports_fastapi_or_starlette() -> None:
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in HTTP_MODULES or path.name == "routes.py" or "/alembic/" in f"/{rel}":
            continue
        bad = {m for m in _imports(path) if m.split(".")[0] in ("fastapi", "starlette", "sse_starlette")}
        if bad:
            offenders.append(f"{rel}: {sorted(bad)}")
    assert not offenders, offenders


def test_services_take_the_principal_without_the_http_dependencies() -> None:
    for path in sorted(ROOT.rglob("service*.py")) + sorted(ROOT.rglob("service/*.py")):
        assert "central.iam.deps" not in _imports(path), path


def test_every_capability_folder_is_in_the_one_ordered_list(monkeypatch: pytest.MonkeyPatch) -> None:
    capabilities.check()
    assert [c for c, _m in capabilities.modules("store")][:3] == ["devices", "bridge", "iam"]
    monkeypatch.setattr(capabilities, "CAPABILITIES", tuple(c for c in capabilities.CAPABILITIES if c != "video"))
    with pytest.raises(RuntimeError, match=r"unlisted: \['video'\]"):
        capabilities.check()
    monkeypatch.setattr(capabilities, "CAPABILITIES", (*capabilities.CAPABILITIES, "video", "ghost"))
    with pytest.raises(RuntimeError, match=r"missing: \['ghost'\]"):
        capabilities.check()


def test_an_unknown_hook_name_is_refused_at_wiring() -> None:
    hooks = Hooks()
    seen: list[int] = []
    hooks.on("codes.revoked", lambda **kw: seen.append(1))
    hooks.emit("codes.revoked", serials=[], identity_id=None, kid=None)
    assert seen == [1] and "events.ingested" in HOOK_NAMES
    with pytest.raises(ValueError, match="no hook named 'codes.revoke'"):
        hooks.on("codes.revoke", lambda **kw: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no hook named"):
        hooks.emit("event.ingested")  # type: ignore[arg-type]


def test_no_test_package_shadows_an_installed_one() -> None:
    """pytest puts the test packages' root on sys.path: a `tests/packaging/` hid the `packaging` library
    from schemathesis for every test that ran after it."""
    import importlib.metadata

    installed = set(importlib.metadata.packages_distributions())
    tests = Path(__file__).resolve().parents[1]
    ours = {p.parent.name for p in tests.glob("*/__init__.py")}
    assert not ours & installed, sorted(ours & installed)


# Where a capability reaches into another's store module, and why it only reads. Anything new here must be
# a read too (or go through the owner's service or a hook): no capability writes another's tables.
CROSS_STORE_READS = {
    ("video", "bridge"): "reads the events feed (events_after, max_seq) and names what the events purge keeps",
    ("devices", "bridge"): "reads a device's recent events for its page",
    ("devices", "video"): "reads the org video maps a site to (a site's owner, for provisioning rights)",
    ("channel", "codes"): "reads scene names and revoked reasons",
}


def _cross_store_imports() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if len(parts) < 2 or parts[0] not in capabilities.CAPABILITIES:
            continue
        cap = parts[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            for m in mods:
                bits = m.split(".")
                if len(bits) >= 3 and bits[0] == "central" and bits[2] == "store" and bits[1] != cap:
                    found.add((cap, bits[1]))
    return found


def test_no_capability_reaches_into_another_store_except_the_listed_reads() -> None:
    assert _cross_store_imports() == set(CROSS_STORE_READS)

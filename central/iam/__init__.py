"""Identity and access: org tree, users, roles, delegated bindings, sessions, API keys, audit chain, PII.

Permissions are plain dotted names. Each capability declares its own in `central/<cap>/__init__.py` as
`PERMISSIONS`; roles are sets of *patterns* (fnmatch, `!` excludes) so a capability added later is covered
by `"*"` or `"*.read"` without editing the role.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
from collections.abc import Iterable

TITLE = "Users & access"  # console menu title

PERMISSIONS: dict[str, str] = {
    "iam.orgs.read": "See the org tree",
    "iam.orgs.write": "Create, rename and delete org nodes under one's scope",
    "iam.users.read": "See user accounts",
    "iam.users.write": "Create, disable and reset user accounts",
    "iam.roles.read": "See roles",
    "iam.roles.write": "Define custom roles",
    "iam.bindings.read": "See role bindings",
    "iam.bindings.write": "Grant (delegate) and revoke role bindings",
    "iam.apikeys.read": "See API keys",
    "iam.apikeys.write": "Create and revoke API keys for subsystems and devices",
    "pii.read": "See personal data (ID-card and phone numbers) unmasked; each read is audited",
    "audit.read": "Read and verify the audit log",
}

# Built-in roles: pattern lists, evaluated against the permissions known at run time.
BUILTIN_ROLES: dict[str, tuple[str, list[str]]] = {
    "city_admin": ("City administrator: everything, city-wide", ["*"]),
    "district_admin": ("District administrator: everything inside the bound district", ["*"]),
    "street_operator": (
        "Street operator: read, dispose events, run calls",
        ["*.read", "video.*", "dialer.run", "registry.write", "!audit.read", "!pii.read", "!iam.*"],
    ),
    "department_issuer": (
        "Department issuer: applies for and issues codes",
        ["codes.*", "registry.read", "!codes.approve", "!codes.supervise"],
    ),
    "auditor": ("Auditor: read-only plus the audit log", ["*.read", "audit.read", "!pii.read"]),
    # The people who run SIP call campaigns: design templates, load lists, run tasks; no personal data.
    "call_operator": (
        "Call campaign operator: templates, call lists and tasks of the voice robot",
        ["dialer.*", "*.read", "!pii.read", "!audit.read", "!iam.*"],
    ),
}


def all_permissions() -> dict[str, str]:
    """iam's own permissions plus every capability's `PERMISSIONS` (collected on each call: cheap, and new
    capabilities appear without a restart of the test process)."""
    import central

    perms = dict(PERMISSIONS)
    for mod in pkgutil.iter_modules(central.__path__):
        if not mod.ispkg or mod.name in ("iam", "store"):
            continue
        try:
            pkg = importlib.import_module(f"central.{mod.name}")
        except ImportError:
            continue
        declared = getattr(pkg, "PERMISSIONS", None)
        if isinstance(declared, dict):
            perms.update({str(k): str(v) for k, v in declared.items()})
    return perms


def matches(patterns: Iterable[str], perm: str) -> bool:
    """True when an include pattern matches `perm` and no `!exclude` pattern does."""
    inc = False
    for p in patterns:
        if p.startswith("!"):
            if fnmatch.fnmatchcase(perm, p[1:]):
                return False
        elif not inc and fnmatch.fnmatchcase(perm, p):
            inc = True
    return inc


def expand(patterns: Iterable[str], universe: Iterable[str]) -> set[str]:
    pats = list(patterns)
    return {p for p in universe if matches(pats, p)}

"""The one way routes authorize: `Depends(require("codes.approve", org_of=...))`.

A `Principal` is built once per request at authentication time: every active binding is expanded into
`permission -> (exact org paths, path prefixes)`, so `allowed()` is a dict lookup plus one
`str.startswith(tuple)` call — no SQL, no pattern matching on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, HTTPException, Request

from central.hub import Hub, get_hub
from central.iam import matches

SESSION_COOKIE = "cb_session"


def under(org: str, scope: str) -> bool:
    """`org` is `scope` or lies below it (`/city/a` is under `/city`, `/city/ab` is not under `/city/a`)."""
    return org == scope or org.startswith(scope + "/")


def minimal(paths: Iterable[str]) -> list[str]:
    """Drop paths already covered by another path in the set."""
    out: list[str] = []
    for p in sorted(set(paths), key=lambda s: (s.count("/"), s)):
        if not any(under(p, q) for q in out):
            out.append(p)
    return sorted(out)


@dataclass
class Principal:
    id: str  # "user:<n>" or "apikey:<n>"
    name: str  # username, or "apikey:<name>"
    kind: str = "user"
    must_change: bool = False
    session: str | None = None  # token hash of the session (for logout)
    # (patterns, org, binding id) of each active binding: the source of truth for unknown permissions.
    bindings: list[tuple[list[str], str, int, str]] = field(default_factory=list)
    _grants: dict[str, tuple[frozenset[str], tuple[str, ...]]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, id: str, name: str, bindings: list[tuple[list[str], str, int, str]],
              universe: Iterable[str], expanded: Callable[[str], set[str]] | None = None, **kw: Any) -> Principal:
        """bindings: (role patterns, org path, binding id, role name). `expanded(role)` may return a cached
        expansion of that role over `universe`."""
        p = cls(id=id, name=name, bindings=bindings, **kw)
        uni = list(universe)
        paths: dict[str, list[str]] = {}
        for patterns, org, _bid, role in bindings:
            perms = expanded(role) if expanded else {x for x in uni if matches(patterns, x)}
            for perm in perms:
                paths.setdefault(perm, []).append(org)
        # Many permissions share one org list (they come from the same few bindings): build each entry once.
        memo: dict[tuple[str, ...], tuple[frozenset[str], tuple[str, ...]]] = {}
        for perm, orgs in paths.items():
            k = tuple(orgs)
            e = memo.get(k)
            if e is None:
                e = memo[k] = p._entry(orgs)
            p._grants[perm] = e
        return p

    @staticmethod
    def _entry(orgs: list[str]) -> tuple[frozenset[str], tuple[str, ...]]:
        m = minimal(orgs)
        return frozenset(m), tuple(o + "/" for o in m)

    def _lookup(self, perm: str) -> tuple[frozenset[str], tuple[str, ...]]:
        g = self._grants.get(perm)
        if g is None:  # a permission nobody declared: match the role patterns once, then cache
            g = self._entry([org for pats, org, _b, _r in self.bindings if matches(pats, perm)])
            self._grants[perm] = g
        return g

    def allowed(self, perm: str, org_path: str) -> bool:
        g = self._grants.get(perm)  # inlined fast path: this runs for every row a service filters
        if g is None:
            g = self._lookup(perm)
        return org_path in g[0] or org_path.startswith(g[1])

    def scopes(self, perm: str) -> list[str]:
        """Org paths where `perm` is granted (minimal set); empty when nowhere."""
        return sorted(self._lookup(perm)[0])

    def has(self, perm: str) -> bool:
        return bool(self._lookup(perm)[0])

    def visible(self, perm: str, org_path: str | None) -> bool:
        """For filtering lists: rows without an org are visible only to holders of `perm` at a root."""
        if org_path is None:
            return any(s.count("/") == 1 for s in self.scopes(perm))
        return self.allowed(perm, org_path)

    @property
    def permissions(self) -> list[str]:
        return sorted(k for k, v in self._grants.items() if v[0])

    @property
    def orgs(self) -> list[str]:
        return minimal(org for _p, org, _b, _r in self.bindings)


def _service(hub: Hub) -> Any:
    from central.iam.service import service_of

    return service_of(hub)


def authenticated(request: Request, hub: Hub = Depends(get_hub)) -> Principal:
    """The caller, from `Authorization: Bearer <session token>`, `X-API-Key`, or (GET only) the session
    cookie. 401 when missing or invalid. Does not enforce the first-login password change."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    svc = _service(hub)
    auth = request.headers.get("authorization", "")
    api_key = request.headers.get("x-api-key")
    principal: Principal | None = None
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "Authorization: expected 'Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        principal = svc.principal_for_session(token.strip())
    elif api_key:
        principal = svc.principal_for_apikey(api_key.strip())
    elif request.method in ("GET", "HEAD") and request.cookies.get(SESSION_COOKIE):
        # Cookie only for reads: a cross-site form post can then never act with the user's session.
        principal = svc.principal_for_session(request.cookies[SESSION_COOKIE])
    else:
        raise HTTPException(401, "not authenticated: send 'Authorization: Bearer <token>' or 'X-API-Key'",
                            headers={"WWW-Authenticate": "Bearer"})
    if principal is None:
        raise HTTPException(401, "invalid or expired credentials", headers={"WWW-Authenticate": "Bearer"})
    request.state.principal = principal
    return principal


def current_principal(principal: Principal = Depends(authenticated)) -> Principal:
    if principal.must_change:
        raise HTTPException(403, "password change required before any other action (POST /api/v1/iam/change-password)")
    return principal


NOT_FOUND = "not found"  # one body for "no such object" and "not yours": existence is not an oracle


def read_perm(perm: str) -> str:
    """The permission that lets one *see* what `perm` acts on: `iam.users.write` -> `iam.users.read`,
    `codes.approve` -> `codes.read`. Out of that scope an object does not exist for the caller."""
    head = perm.rpartition(".")[0]
    return head + ".read" if head else perm


def _audit_denial(request: Request, hub: Hub, principal: Principal, perm: str, org: str | None) -> None:
    from central.iam.audit import record

    with hub.store.tx() as db:
        record(db, actor=principal.name, action="denied", target=f"{request.method} {request.url.path}",
               org=org, detail={"permission": perm})


def _deny(request: Request, hub: Hub, principal: Principal, perm: str, org: str | None) -> None:
    """Audited refusal that tells the caller nothing about the object: 404 when it may not even see it,
    else 403 naming only the missing permission (never the object's org)."""
    _audit_denial(request, hub, principal, perm, org)
    # Holding the permission somewhere but not seeing this object: it is outside the caller's scope.
    if org is not None and principal.has(perm) and not principal.allowed(read_perm(perm), org):
        raise HTTPException(404, NOT_FOUND)
    raise HTTPException(403, f"forbidden: {principal.name} lacks '{perm}'" + (" here" if org else ""))


def require(perm: str, org_of: Callable[..., Any] | None = None) -> Callable[..., Principal]:
    """Dependency: the principal, if it holds `perm` — over the resource's org path when `org_of` (a
    FastAPI dependency returning that path, or None when there is no such object) is given, else anywhere
    (the service then filters by `principal.scopes(perm)`). 401 without credentials; 404 (audited) for an
    object outside what the caller may see, the same answer as for a missing one; 403 (audited) without
    the permission."""
    if org_of is None:
        def dep(request: Request, hub: Hub = Depends(get_hub),
                principal: Principal = Depends(current_principal)) -> Principal:
            if not principal.has(perm):
                _deny(request, hub, principal, perm, None)
            return principal
    else:
        def dep(request: Request, hub: Hub = Depends(get_hub),  # type: ignore[misc]
                principal: Principal = Depends(current_principal),
                org: str | None = Depends(org_of)) -> Principal:
            if org is None:
                raise HTTPException(404, NOT_FOUND)
            if not principal.allowed(perm, str(org)):
                _deny(request, hub, principal, perm, str(org))
            return principal

    dep.iam_permission = perm  # type: ignore[attr-defined]  # lets tests find guarded routes
    return dep


def public(reason: str) -> Callable[[], None]:
    """Marks a route as deliberately unauthenticated (e.g. the city-code resolver page); the route
    coverage test accepts only routes that carry this marker or `require`."""
    def dep() -> None:
        return None

    dep.iam_public = reason  # type: ignore[attr-defined]
    return dep

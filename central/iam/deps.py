"""The one way routes authorize: `Depends(require("codes.approve", org_of=...))`. The caller is a
`central.iam.principal.Principal` (re-exported here for routes); this module is the HTTP side of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, HTTPException, Request

from central.deps import get_hub
from central.hub import Hub
from central.iam.principal import NOT_FOUND, Principal, minimal, read_perm, under

__all__ = ["NOT_FOUND", "Principal", "authenticated", "current_principal", "minimal", "read_perm", "require",
           "under"]

SESSION_COOKIE = "cb_session"


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

"""Who is calling and what they may do, with no HTTP in it: services take a `Principal` and filter by it;
`central.iam.deps` builds one per request.

A `Principal` is built once per request at authentication time: every active binding is expanded into
`permission -> (exact org paths, path prefixes)`, so `allowed()` is a dict lookup plus one
`str.startswith(tuple)` call — no SQL, no pattern matching on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from central.iam import matches


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


NOT_FOUND = "not found"  # one body for "no such object" and "not yours": existence is not an oracle


def read_perm(perm: str) -> str:
    """The permission that lets one *see* what `perm` acts on: `iam.users.write` -> `iam.users.read`,
    `codes.approve` -> `codes.read`. Out of that scope an object does not exist for the caller."""
    head = perm.rpartition(".")[0]
    return head + ".read" if head else perm

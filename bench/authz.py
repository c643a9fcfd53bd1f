"""Permission checks per second: 10k users, 1k org nodes, 50k bindings, on one core.

Principals are built the way a request builds them (SQL over iam_bindings, role expansion), then
`Principal.allowed(perm, org)` is timed over random (user, permission, org) triples. Baseline, same run:
a plain dict lookup of the same triples in a precomputed answer table (the fastest possible "check").
Last stdout line: {"metric","value","unit","target","baseline","ratio"}.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa

from central.app import build_hub  # noqa: E402
from central.iam import BUILTIN_ROLES  # noqa: E402
from central.settings import MqttSettings, Settings  # noqa: E402

USERS, ORGS, BINDINGS, CHECKS, TARGET = 10_000, 1_000, 50_000, 500_000, 50_000


def org_tree() -> list[str]:
    orgs = ["/city"]
    for d in range(20):
        orgs.append(f"/city/d{d}")
        for s in range(10):
            orgs.append(f"/city/d{d}/s{s}")
            for u in range(4):
                orgs.append(f"/city/d{d}/s{s}/u{u}")
    return orgs[:ORGS]


def main() -> None:
    rnd = random.Random(7)
    tmp = Path(tempfile.mkdtemp(prefix="authz-bench-"))
    hub = build_hub(Settings(data_dir=tmp, mqtt=MqttSettings(enabled=False)))
    svc = hub.services["iam"]
    orgs = org_tree()
    roles = list(BUILTIN_ROLES)
    t0 = time.perf_counter()
    with hub.store.tx() as db:
        # seeded straight into iam's tables (Core; a bench fixture, not a product path)
        db.run(sa.text("INSERT INTO iam_orgs(path, parent, name, created_at) VALUES (:p, :parent, :p, 0)"),
               [{"p": o, "parent": o.rsplit("/", 1)[0] or None} for o in orgs])
        db.run(sa.text("INSERT INTO iam_users(id, username, org, pw_hash, must_change, created_at)"
                       " VALUES (:i, :u, :o, '!', 0, 0)"),
               [{"i": i, "u": f"u{i}", "o": rnd.choice(orgs)} for i in range(1, USERS + 1)])
        db.run(sa.text("INSERT INTO iam_bindings(user_id, role, org, granted_by, created_at)"
                       " VALUES (:u, :r, :o, 'bench', 0)"),
               [{"u": (i % USERS) + 1, "r": rnd.choice(roles[1:]), "o": rnd.choice(orgs[1:])} for i in range(BINDINGS)])
    print(f"seeded {USERS} users, {len(orgs)} orgs, {BINDINGS} bindings in {time.perf_counter() - t0:.2f}s")

    t0 = time.perf_counter()
    principals = [svc.principal_for_user(i) for i in range(1, USERS + 1)]
    build = time.perf_counter() - t0
    print(f"built {USERS} principals (auth-time precompute) in {build:.2f}s = {USERS / build:,.0f}/s")

    perms = sorted(svc.universe())
    under = {o: [x for x in orgs if x == o or x.startswith(o + "/")] for o in orgs}
    triples = []
    for i in range(CHECKS):  # half aimed inside one of the user's own bindings, half anywhere
        u = rnd.randrange(USERS)
        bound = principals[u].bindings
        o = rnd.choice(under[rnd.choice(bound)[1]]) if i % 2 and bound else rnd.choice(orgs)
        triples.append((u, rnd.choice(perms), o))
    # Same-run baseline: the answers precomputed into one dict, then looked up.
    answers = {(u, p, o): principals[u].allowed(p, o) for u, p, o in triples}
    allowed_count = sum(answers.values())

    def run_checks() -> float:
        t = time.perf_counter()
        for u, p, o in triples:
            principals[u].allowed(p, o)
        return time.perf_counter() - t

    def run_dict() -> float:
        t = time.perf_counter()
        get = answers.get
        for u, p, o in triples:
            get((u, p, o))
        return time.perf_counter() - t

    check_s = min(run_checks() for _ in range(3))
    dict_s = min(run_dict() for _ in range(3))
    rate, base = CHECKS / check_s, CHECKS / dict_s
    print(f"{CHECKS} checks ({allowed_count} allowed): {rate:,.0f} checks/s; dict lookup {base:,.0f}/s")
    hub.close()
    print(json.dumps({"metric": "authz_checks_per_s", "value": round(rate), "unit": "checks/s", "target": TARGET,
                      "baseline": round(base), "ratio": round(rate / base, 3)}))


if __name__ == "__main__":
    main()

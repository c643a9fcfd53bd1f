"""City code authority (城市码 = city code): departments, issuance applications with three checks, code
rules, URL filing, issuing, online verification, the resolver page, supervision and webhooks."""

PERMISSIONS: dict[str, str] = {
    "codes.read": "See departments, applications, issued codes and the resolver's officer view",
    "codes.apply": "Register a department's applications, file guide URLs, manage app keys and webhooks",
    "codes.approve": "Approve or reject issuance applications and filed URLs; maintain the duty catalogue",
    "codes.issue": "Issue city codes under an approved application",
    "codes.verify": "Verify city codes online",
    "codes.revoke": "Revoke a code, every code of an entity, or a department key",
    "codes.keys": "Register departments and rotate department issuing keys",
    "codes.supervise": "Supervision statistics, CSV export and the dashboard",
    "codes.feed.read": "Read the codes change feed: issued and revoked codes, terminal scans (big-data platform)",
}

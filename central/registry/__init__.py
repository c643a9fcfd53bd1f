"""Unified base identifier registry (统一基础标识库): identifiers, links, search, usage applications,
aliases and the change feed for the big-data platform."""

PERMISSIONS: dict[str, str] = {
    "registry.read": "Look up and search identifiers and links in one's scope",
    "registry.write": "Register, update, link and alias entities in one's scope",
    "registry.apply": "Apply to use another department's identifiers and data",
    "registry.approve": "Approve or reject usage applications for one's own identifiers",
    "registry.feed.read": "Read the registry change feed (big-data platform sharing)",
}

"""Outbound voice robot (智能外呼): scene templates as dialog graphs, semantic expressions, call tasks,
a pjsua2 SIP engine in its own process, ASR/TTS, CDRs and reports."""

PERMISSIONS: dict[str, str] = {
    "dialer.read": "View dialer templates, tasks, progress, CDRs and reports",
    "dialer.design": "Create, copy and customise scene templates",
    "dialer.run": "Create call tasks, import call lists, start/pause/resume/cancel tasks",
    "dialer.dnc": "Manage the do-not-call list",
    "dialer.feed.read": "Read the dialer change feed: call results and completed tasks (big-data platform)",
}

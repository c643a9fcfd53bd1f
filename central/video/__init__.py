"""Video big data (视频大数据): edge events -> correlated cases -> disposal workflow (处置) and analysis (研判)."""

PERMISSIONS: dict[str, str] = {
    "video.read": "Read video cases, snapshots, statistics and heat maps",
    "video.dispose": "Review, dispatch, acknowledge and resolve video cases",
    "video.admin": "Map sites to orgs, set camera positions/adjacency and dispatch routing rules",
    "video.feed.read": "Read the video case change feed (big-data platform)",
}

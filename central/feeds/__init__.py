"""Change feeds for the big-data platform (docs/FEEDS.md): the shared cursor, the JSON Lines shape
(`routes.feed_response`) and the MQTT push worker. Each capability's own feed is `central/<cap>/feed.py`
(its `SOURCE`); permissions are declared by those capabilities (`<cap>.feed.read`)."""

PERMISSIONS: dict[str, str] = {}

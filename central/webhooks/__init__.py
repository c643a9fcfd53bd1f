"""The hub's one durable webhook outbox: every capability's outgoing webhooks (codes events, video alerts,
dialer results) are rows enqueued in the caller's own transaction and delivered by one leased worker,
signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`)."""

TITLE = "Webhooks"  # console menu title

PERMISSIONS: dict[str, str] = {
    "webhooks.read": "List webhook endpoints and deliveries",
    "webhooks.manage": "Replay webhook deliveries and rotate endpoint secrets",
}

"""Code-bound access channel pilot (seed 3.3, 场景专用通道): a city code of a scene marked "channel", verified by
an authorised terminal or app, yields a short-lived signed access grant plus a WireGuard peer config whose
AllowedIPs reach only that scene's service; the grant ends on expiry or when the code is revoked."""

TITLE = "Access channels"

PERMISSIONS: dict[str, str] = {
    "channel.read": "See channel scenes, grants and the gateway peer list",
    "channel.manage": "Mark an approved code scene as a channel: its service address, gateway and terminals",
    "channel.grant": "Request an access grant by presenting a scanned city code (authorised terminals)",
    "channel.revoke": "Revoke access grants",
}

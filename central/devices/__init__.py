"""Devices: provisioning (broker credentials + ACL + ready config), status, heartbeats, commands."""

PERMISSIONS: dict[str, str] = {
    "devices.read": "See devices, their status and queue depth",
    "devices.write": "Provision devices and send them commands",
}

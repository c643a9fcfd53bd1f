"""The admin console (管理控制台): server-rendered page shells over the hub's own API.

Pages carry no data and make no authorization decision of their own: the browser keeps the session
token (sessionStorage) and every number on screen comes from an `/api/v1/...` call made with it, so each
role sees exactly what the API lets it see."""

TITLE = "Console"
PERMISSIONS: dict[str, str] = {}

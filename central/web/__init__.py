"""The admin console (管理控制台): a Vue 3 single-page app (central/web/frontend, built by Vite into
central/web/dist by `./run install`) served at /console/ by the hub.

The app carries no data and makes no authorization decision of its own: the browser keeps the session
token (sessionStorage) and every number on screen comes from an `/api/v1/...` call made with it, so each
role sees exactly what the API lets it see (its menu too: GET /api/v1/iam/me)."""

TITLE = "Console"
PERMISSIONS: dict[str, str] = {}

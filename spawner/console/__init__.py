"""The lab admin console: a JupyterHub-managed service at /services/gpuhub/ (docs/admin.md: "The console").

It signs people in with the hub's OAuth (`HubOAuth`) and talks only to the hub's REST API
(`/hub/api/gpuhub/...`, docs/api.md) with the signed-in user's own token, so the hub decides
every permission. Modules:

- `app`      the Tornado application and `python -m spawner.console`
- `hub`      the hub's REST API with one user's token
- `handlers` pages and the console's JSON API (`/services/gpuhub/api/...`)
- `report`   usage rows -> bars, budgets and CSV (pure)
- `openapi`  the JSON API's OpenAPI 3 description (pure)
"""

# What the console's OAuth token may carry (the service's `oauth_client_allowed_scopes`): the hub
# grants each person only those of these they hold, filters included (an instructor's `read:servers`
# stays cut to their course).
TOKEN_SCOPES = [
    "custom:gpuhub:view",
    "custom:gpuhub:manage",
    "custom:gpuhub:read-usage",
    "read:users",
    "list:users",
    "read:servers",
    "list:groups",
    "read:groups",
]

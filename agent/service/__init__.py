"""The REST service (`recagent serve`): FastAPI app, keys and tenants, the SQLite/PostgreSQL store,
live per-tenant agents, metrics and JSON access logs.

Entry-point layer, below ``agent.cli`` (which starts it) and above the application packages."""

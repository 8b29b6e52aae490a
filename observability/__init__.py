"""Observability of the suite: the status service (`python -m observability.status`: /health, /status, /metrics),
what it collects (`collect`), structured JSON logs (`logs`), alert rules, Alertmanager config and dashboards."""

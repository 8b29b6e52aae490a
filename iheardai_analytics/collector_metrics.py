"""The HTTP collector's Prometheus metrics (iheardai_analytics.collector)."""

from prometheus_client import Counter, Histogram

REQUESTS = Counter("iheardai_collector_requests", "POST /api/analytics requests by response status", ["status"])
EVENTS = Counter("iheardai_collector_events", "events received, by outcome", ["outcome"])
LATENCY = Histogram("iheardai_collector_request_seconds", "POST /api/analytics time to a 202",
                    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))

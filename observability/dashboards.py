"""Grafana dashboards as code: the four dashboards of the seed README, built with grafana-foundation-sdk.

    python -m observability.dashboards           # (re)writes the generated files below
    python -m observability.dashboards --check   # exits 1, naming them, if a checked-in file is stale

Generated (checked in, never edited by hand):
- observability/dashboards/<name>.json: pipeline overview, Kafka metrics, database performance, business KPIs
  (Grafana 11.6 dashboard JSON; Docker users get them provisioned by docker-compose.yml);
- flink-deploy/base/observability-generated.yaml: the same dashboards as ConfigMaps for Grafana's dashboard
  sidecar (label grafana_dashboard="1") and the alert rules of observability/rules/*.yml as a PrometheusRule.

Prometheus panels read the metric contract of the alert rules (the status service's iheardai_*, Flink's
reporter, postgres- and redis-exporter) and use raw metrics only, so they work without the recording rules.
The business KPI panels query the tables of sql/*.sql through a Grafana PostgreSQL data source. Both data
sources are dashboard variables (`prometheus`, `postgres`), so the JSON imports into any Grafana.

`prometheus_queries()` lists every Prometheus panel query with Grafana's variables replaced (a live test
runs each against the running Prometheus); `sql_queries()` does the same for the SQL panels.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import yaml
from grafana_foundation_sdk.builders import barchart, bargauge, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as viz
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "observability" / "dashboards"
RULES_DIR = REPO / "observability" / "rules"
K8S_FILE = REPO / "flink-deploy" / "base" / "observability-generated.yaml"

PROMETHEUS_TYPE = "prometheus"
POSTGRES_TYPE = "grafana-postgresql-datasource"
PROMETHEUS = model.DataSourceRef(type_val=PROMETHEUS_TYPE, uid="${prometheus}")
POSTGRES = model.DataSourceRef(type_val=POSTGRES_TYPE, uid="${postgres}")
PIPELINES = ("kpi", "frontend", "billing", "archive", "leads")
# A job or group belongs to the pipeline its name names as a dash-separated word (observability.collect's
# pipeline_of): iheardai-<pipeline>, iheardai-demo-<pipeline> under ./run demo.
FLINK_JOB = 'job_name=~"(.*[-_])?($pipeline)([-_].*)?"'  # Flink's reporter writes job_name with '_' for '-'
PIPELINE_GROUP = 'group=~"(.*-)?($pipeline)(-.*)?"'


# --- SQL targets (the SDK has no PostgreSQL query type) ------------------------------------------------

class _SqlQuery(cogvariants.Dataquery):
    """A raw-SQL target of Grafana's PostgreSQL data source, as its query editor saves it in code mode."""

    def __init__(self, sql: str, fmt: str) -> None:
        self.sql, self.fmt, self.ref_id = sql, fmt, "A"

    def to_json(self) -> Dict[str, object]:
        return {"datasource": POSTGRES.to_json(), "editorMode": "code", "format": self.fmt, "rawQuery": True,
                "rawSql": self.sql, "refId": self.ref_id}


class _Sql(cogbuilder.Builder[_SqlQuery]):
    def __init__(self, sql: str, fmt: str = "table") -> None:
        if fmt not in ("table", "time_series"):
            raise ValueError(f"SQL format must be table or time_series, not {fmt!r}")
        self._internal = _SqlQuery(_dedent(sql), fmt)

    def build(self) -> _SqlQuery:
        return self._internal


def _dedent(sql: str) -> str:
    lines = [line.rstrip() for line in sql.strip("\n").splitlines()]
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines)


# --- panel helpers ---------------------------------------------------------------------------------------

def _prom(expr: str, legend: str = "") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(_dedent(expr)).datasource(PROMETHEUS).legend_format(legend or "__auto").range()


def _thresholds(*steps) -> dashboard.ThresholdsConfig:
    """(None, "green"), (300, "red"): colour from each value up."""
    return (dashboard.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=v, color=c) for v, c in steps]))


def _with_targets(panel, targets: Sequence[cogbuilder.Builder], datasource: model.DataSourceRef, title: str,
                  description: str, w: int, h: int):
    panel = panel.title(title).description(description).datasource(datasource).span(w).height(h)
    for i, t in enumerate(targets):
        t.build().ref_id = chr(ord("A") + i)
        panel = panel.with_target(t)
    return panel


def _timeseries(title: str, description: str, *targets, unit: str = "short", w: int = 12, h: int = 8,
                minimum: Optional[float] = 0, maximum: Optional[float] = None, thresholds=None,
                datasource: model.DataSourceRef = PROMETHEUS, stack: bool = False) -> timeseries.Panel:
    p = timeseries.Panel().unit(unit).fill_opacity(10).line_width(1)
    if minimum is not None:
        p = p.min(minimum)
    if maximum is not None:
        p = p.max(maximum)
    if thresholds is not None:
        p = p.thresholds(thresholds).thresholds_style(
            viz.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED))
    if stack:
        p = p.stacking(viz.StackingConfig().mode(common.StackingMode.NORMAL)).fill_opacity(40)
    legend = viz.VizLegendOptions().display_mode(common.LegendDisplayMode.TABLE).placement(
        common.LegendPlacement.BOTTOM).show_legend(True).calcs(["lastNotNull", "max"])
    return _with_targets(p.legend(legend), targets, datasource, title, description, w, h)


def _stat(title: str, description: str, *targets, unit: str = "short", w: int = 6, h: int = 4,
          mappings: Optional[List[model.ValueMap]] = None, thresholds=None,
          datasource: model.DataSourceRef = PROMETHEUS) -> stat.Panel:
    p = (stat.Panel().unit(unit).color_mode(common.BigValueColorMode.BACKGROUND)
         .graph_mode(common.BigValueGraphMode.NONE)
         .reduce_options(viz.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    if mappings:
        p = p.mappings(mappings)
    p = p.thresholds(thresholds or _thresholds((None, "blue")))
    return _with_targets(p, targets, datasource, title, description, w, h)


def _table(title: str, description: str, *targets, w: int = 12, h: int = 8, unit: str = "short",
           datasource: model.DataSourceRef = PROMETHEUS) -> table.Panel:
    return _with_targets(table.Panel().unit(unit), targets, datasource, title, description, w, h)


def _bars(title: str, description: str, *targets, x_field: str, w: int = 12, h: int = 8,
          datasource: model.DataSourceRef = POSTGRES) -> barchart.Panel:
    p = (barchart.Panel().x_field(x_field).show_value(common.VisibilityMode.AUTO)
         .orientation(common.VizOrientation.AUTO))
    return _with_targets(p, targets, datasource, title, description, w, h)


def _bargauge(title: str, description: str, *targets, unit: str = "short", w: int = 12, h: int = 8,
              thresholds=None) -> bargauge.Panel:
    p = (bargauge.Panel().unit(unit).orientation(common.VizOrientation.HORIZONTAL)
         .display_mode(common.BarGaugeDisplayMode.GRADIENT)
         .reduce_options(viz.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
         .thresholds(thresholds or _thresholds((None, "green"))))
    return _with_targets(p, targets, PROMETHEUS, title, description, w, h)


UP_DOWN = [model.ValueMap(options={"0": model.ValueMappingResult(text="DOWN", color="red", index=0),
                                    "1": model.ValueMappingResult(text="UP", color="green", index=1)})]
RUNNING = [model.ValueMap(options={"0": model.ValueMappingResult(text="NOT RUNNING", color="red", index=0),
                                    "1": model.ValueMappingResult(text="RUNNING", color="green", index=1)})]


def _datasource_variable(name: str, label: str, plugin: str) -> dashboard.DatasourceVariable:
    return dashboard.DatasourceVariable(name).label(label).type(plugin)


def _base(uid: str, title: str, description: str, tags: Sequence[str]) -> dashboard.Dashboard:
    return (dashboard.Dashboard(title).uid(uid).description(description).tags(["iheardai", *tags])
            .time("now-6h", "now").refresh("30s").timezone("browser").editable()
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .link(dashboard.DashboardLink("iheardAI dashboards").type(model.DashboardLinkType.DASHBOARDS)
                  .tags(["iheardai"]).as_dropdown(True).keep_time(True)))


# --- the four dashboards ---------------------------------------------------------------------------------

def pipeline_overview() -> dashboard.Dashboard:
    d = (_base("iheardai-pipeline-overview", "iheardAI pipeline overview",
               "Each pipeline's Flink job: running, uptime, restarts, checkpoints, throughput, backpressure, "
               "dead letters and sink freshness.", ["pipelines", "flink"])
         .with_variable(_datasource_variable("prometheus", "Prometheus", PROMETHEUS_TYPE))
         .with_variable(dashboard.QueryVariable("pipeline").label("Pipeline").datasource(PROMETHEUS)
                        .query({"query": "label_values(iheardai_job_up, pipeline)", "refId": "pipeline"})
                        .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD).multi(True).include_all(True)
                        .all_value("|".join(PIPELINES))))
    d = (d.with_row(dashboard.Row("Jobs"))
         .with_panel(_stat("Job state", "1 while the pipeline's Flink job is RUNNING (iheardai_job_up).",
                           _prom('iheardai_job_up{pipeline=~"$pipeline"}', "{{pipeline}}"),
                           mappings=RUNNING, w=8, thresholds=_thresholds((None, "red"), (1, "green"))))
         .with_panel(_stat("Uptime", "Time since the current job started.",
                           _prom('iheardai_job_uptime_seconds{pipeline=~"$pipeline"}', "{{pipeline}}"),
                           unit="s", w=8))
         .with_panel(_stat("Restarts of the current job", "Flink numRestarts of the pipeline's current job.",
                           _prom('iheardai_job_restarts{pipeline=~"$pipeline"}', "{{pipeline}}"), w=8,
                           thresholds=_thresholds((None, "green"), (1, "orange"), (5, "red"))))
         .with_panel(_timeseries(
             "Last checkpoint age", "Seconds since the last completed checkpoint; offsets are committed on "
             "checkpoints (CheckpointStale fires over 5 min).",
             _prom('iheardai_job_last_checkpoint_age_seconds{pipeline=~"$pipeline"}', "{{pipeline}}"),
             unit="s", thresholds=_thresholds((None, "green"), (300, "red"))))
         .with_panel(_timeseries(
             "Restarts and failed checkpoints (10 min)", "What PipelineJobRestarting and CheckpointsFailing "
             "fire on.",
             _prom('increase(iheardai_job_restarts{pipeline=~"$pipeline"}[10m])', "{{pipeline}} restarts"),
             _prom('increase(iheardai_job_failed_checkpoints{pipeline=~"$pipeline"}[10m])',
                   "{{pipeline}} failed checkpoints"))))
    d = (d.with_row(dashboard.Row("Throughput"))
         .with_panel(_timeseries(
             "Records in per second, per job", "Sum of numRecordsInPerSecond over the job's tasks (each chained "
             "task counts its own input).",
             _prom(f"sum by (job_name) (flink_taskmanager_job_task_numRecordsInPerSecond{{{FLINK_JOB}}})",
                   "{{job_name}}"), unit="recps", w=8))
         .with_panel(_timeseries(
             "Busy time per task", "Busiest subtask of each task, ms per second (1000 = saturated).",
             _prom(f"max by (job_name, task_name) (flink_taskmanager_job_task_busyTimeMsPerSecond{{{FLINK_JOB}}})",
                   "{{job_name}} {{task_name}}"), unit="ms", maximum=1000, w=8))
         .with_panel(_timeseries(
             "Backpressured time per task", "Most backpressured subtask of each task, ms per second "
             "(FlinkTaskBackpressured fires over 500 for 10 min).",
             _prom(f"max by (job_name, task_name) "
                   f"(flink_taskmanager_job_task_backPressuredTimeMsPerSecond{{{FLINK_JOB}}})",
                   "{{job_name}} {{task_name}}"), unit="ms", maximum=1000, w=8,
             thresholds=_thresholds((None, "green"), (500, "red"))))
         .with_panel(_timeseries(
             "TaskManager heap used", "JVM heap used per TaskManager.",
             _prom("flink_taskmanager_Status_JVM_Memory_Heap_Used", "{{tm_id}}"), unit="bytes", w=8))
         .with_panel(_timeseries(
             "Consumer lag per pipeline", "Messages behind, summed over the topics and partitions of the "
             "pipeline's consumer group.",
             _prom(f"sum by (group) (iheardai_consumer_lag_messages{{{PIPELINE_GROUP}}})",
                   "{{group}}"), w=8))
         .with_panel(_stat("Flink jobs running", "RUNNING jobs on the Flink cluster (all pipelines and others).",
                           _prom("flink_jobmanager_numRunningJobs", "jobs"), w=8, h=8))
         .with_panel(_timeseries(
             "Event time behind the clock, per job", "Wall clock minus the job's lowest input watermark "
             "(iheardai:job_watermark_ms:min). Sessions and billing hours go final only as it advances. A job "
             "with no watermark at all (a partition with no record since the job started) shows at the 1-day "
             "cap; PipelineEventTimeStalled fires when it has not moved for 30 min over 2 h behind.",
             _prom('clamp_max(time() - iheardai:job_watermark_ms:min{pipeline=~"$pipeline"} / 1000, 86400)',
                   "{{job_name}}"), unit="s", w=8, thresholds=_thresholds((None, "green"), (7200, "red")))))
    d = (d.with_row(dashboard.Row("Outputs"))
         .with_panel(_timeseries(
             "Dead letters in the last hour", "Records on each dead-letter topic in the last hour.",
             _prom("iheardai_dlq_messages_last_hour", "{{topic}}"), w=8))
         .with_panel(_timeseries(
             "Sink freshness", "Seconds since the last write to each Postgres table (SinkStalled fires after "
             "15 min while its topics have traffic).",
             _prom("time() - iheardai_sink_last_write_timestamp_seconds", "{{table}}"), unit="s", w=8,
             thresholds=_thresholds((None, "green"), (900, "red"))))
         .with_panel(_timeseries(
             "Archive freshness", "Seconds since the archive last wrote a Parquet file for each topic (hourly "
             "files: up to an hour is normal).",
             _prom("time() - iheardai_archive_last_write_timestamp_seconds", "{{topic}}"), unit="s", w=8,
             thresholds=_thresholds((None, "green"), (7200, "red")))))
    return d


def kafka_metrics() -> dashboard.Dashboard:
    group_filter = 'group=~"$group"'
    d = (_base("iheardai-kafka", "iheardAI Kafka metrics",
               "Consumer lag of the pipelines' groups (messages and seconds, per partition), topic traffic and "
               "dead letters.", ["kafka"])
         .with_variable(_datasource_variable("prometheus", "Prometheus", PROMETHEUS_TYPE))
         .with_variable(dashboard.QueryVariable("group").label("Consumer group").datasource(PROMETHEUS)
                        .query({"query": "label_values(iheardai_consumer_lag_messages, group)", "refId": "group"})
                        .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD).multi(True).include_all(True)
                        .all_value(".*")))
    d = (d.with_row(dashboard.Row("Consumer lag"))
         .with_panel(_timeseries(
             "Lag in messages per partition", "End offset minus committed offset (the groups commit on Flink "
             "checkpoints).",
             _prom(f"iheardai_consumer_lag_messages{{{group_filter}}}", "{{group}} {{topic}}[{{partition}}]")))
         .with_panel(_timeseries(
             "Lag in seconds per partition", "Age of the oldest record the group has not consumed.",
             _prom(f"iheardai_consumer_lag_seconds{{{group_filter}}}", "{{group}} {{topic}}[{{partition}}]"),
             unit="s", thresholds=_thresholds((None, "green"), (300, "red"))))
         .with_panel(_bargauge(
             "Lag per group and topic", "All partitions (ConsumerLagHigh fires over 1000 for 5 min).",
             _prom(f"sum by (group, topic) (iheardai_consumer_lag_messages{{{group_filter}}})",
                   "{{group}} {{topic}}"), thresholds=_thresholds((None, "green"), (1000, "red"))))
         .with_panel(_bargauge(
             "Oldest unconsumed record per group and topic", "ConsumerLagSecondsHigh fires over 300 s for 5 min.",
             _prom(f"max by (group, topic) (iheardai_consumer_lag_seconds{{{group_filter}}})",
                   "{{group}} {{topic}}"), unit="s", thresholds=_thresholds((None, "green"), (300, "red")))))
    d = (d.with_row(dashboard.Row("Topics"))
         .with_panel(_timeseries(
             "Topic traffic", "Messages per second produced to each topic (end offsets).",
             _prom('sum by (topic) (rate(iheardai_topic_messages_total{topic!~".+[.]dlq"}[5m]))', "{{topic}}"),
             unit="mps", stack=True))
         .with_panel(_timeseries(
             "Dead letters per second", "Records per second on each dead-letter topic (DeadLetterRateHigh "
             "fires over 1/s for 10 min).",
             _prom('sum by (topic) (rate(iheardai_topic_messages_total{topic=~".+[.]dlq"}[5m]))', "{{topic}}"),
             unit="mps"))
         .with_panel(_timeseries(
             "Dead-letter share of each topic", "Dead letters per event of the source topic "
             "(DeadLetterRatioHigh fires over 5% for 10 min).",
             _prom('sum by (topic) (label_replace(rate(iheardai_topic_messages_total{topic=~".+[.]dlq"}[5m]), '
                   '"topic", "$1", "topic", "(.+)[.]dlq"))\n'
                   '/ sum by (topic) (rate(iheardai_topic_messages_total{topic!~".+[.]dlq"}[5m]))', "{{topic}}"),
             unit="percentunit", thresholds=_thresholds((None, "green"), (0.05, "red"))))
         .with_panel(_bargauge(
             "Dead letters in the last hour", "Per dead-letter topic.",
             _prom("iheardai_dlq_messages_last_hour", "{{topic}}")))
         .with_panel(_stat("Kafka", "The status service's Kafka check.",
                           _prom('iheardai_health_up{service="kafka"}', "kafka"), mappings=UP_DOWN,
                           thresholds=_thresholds((None, "red"), (1, "green"))))
         .with_panel(_stat("Kafka check latency", "",
                           _prom('iheardai_health_latency_seconds{service="kafka"}', "kafka"), unit="s")))
    return d


def database_performance() -> dashboard.Dashboard:
    db = 'datname="iheardai"'
    d = (_base("iheardai-database", "iheardAI database performance",
               "Postgres (postgres-exporter) with the sinks' batch write times, and Redis (redis-exporter).",
               ["postgres", "redis"])
         .with_variable(_datasource_variable("prometheus", "Prometheus", PROMETHEUS_TYPE)))
    d = (d.with_row(dashboard.Row("Postgres"))
         .with_panel(_stat("Postgres", "postgres-exporter's connection to Postgres (pg_up).",
                           _prom("pg_up", "postgres"), mappings=UP_DOWN, w=4,
                           thresholds=_thresholds((None, "red"), (1, "green"))))
         .with_panel(_stat("Connections", "Backends connected to the iheardai database.",
                           _prom(f"sum(pg_stat_database_numbackends{{{db}}})", "connections"), w=4))
         .with_panel(_timeseries(
             "Slowest sink batch write per table", "The slowest batch write of each table in each scrape "
             "interval, from the sinks' write latency distributions (SlowDatabaseOperation fires over 1 s).",
             _prom("iheardai_db_operation_seconds_max", "{{table}}"), unit="s", w=16,
             thresholds=_thresholds((None, "green"), (1, "red"))))
         .with_panel(_timeseries(
             "Longest open transaction by state", "PostgresLongTransaction fires over 1 s for 1 min.",
             _prom(f"pg_stat_activity_max_tx_duration{{{db}}}", "{{state}}"), unit="s", w=8,
             thresholds=_thresholds((None, "green"), (1, "red"))))
         .with_panel(_timeseries(
             "Transactions per second", "",
             _prom(f"rate(pg_stat_database_xact_commit{{{db}}}[5m])", "commits"),
             _prom(f"rate(pg_stat_database_xact_rollback{{{db}}}[5m])", "rollbacks"), unit="ops", w=8))
         .with_panel(_timeseries(
             "Rows written per second", "Inserted and updated rows (the sinks upsert).",
             _prom(f"rate(pg_stat_database_tup_inserted{{{db}}}[5m])", "inserted"),
             _prom(f"rate(pg_stat_database_tup_updated{{{db}}}[5m])", "updated"), unit="rowsps", w=8))
         .with_panel(_timeseries(
             "Deadlocks and conflicts (1 h)", "",
             _prom(f"increase(pg_stat_database_deadlocks{{{db}}}[1h])", "deadlocks"),
             _prom(f"increase(pg_stat_database_conflicts{{{db}}}[1h])", "conflicts"), w=8))
         .with_panel(_timeseries(
             "Block cache hit ratio", "Share of block reads served from shared buffers.",
             _prom(f"rate(pg_stat_database_blks_hit{{{db}}}[5m]) / (rate(pg_stat_database_blks_hit{{{db}}}[5m]) "
                   f"+ rate(pg_stat_database_blks_read{{{db}}}[5m]))", "hit ratio"),
             unit="percentunit", maximum=1, w=8))
         .with_panel(_timeseries(
             "Health check latency", "The status service's checks of Postgres and Redis.",
             _prom('iheardai_health_latency_seconds{service=~"postgres|redis"}', "{{service}}"), unit="s", w=8)))
    d = (d.with_row(dashboard.Row("Redis"))
         .with_panel(_stat("Redis", "redis-exporter's connection to Redis (redis_up).",
                           _prom("redis_up", "redis"), mappings=UP_DOWN, w=4,
                           thresholds=_thresholds((None, "red"), (1, "green"))))
         .with_panel(_stat("Connected clients", "", _prom("redis_connected_clients", "clients"), w=4))
         .with_panel(_timeseries(
             "Commands per second", "By command (the KPI pipeline's session state writes are pipelined).",
             _prom("sum by (cmd) (rate(redis_commands_total[5m]))", "{{cmd}}"), unit="ops", w=16, stack=True))
         .with_panel(_timeseries(
             "Time in commands per second", "Seconds Redis spent executing each command per second.",
             _prom("sum by (cmd) (rate(redis_commands_duration_seconds_total[5m]))", "{{cmd}}"), unit="s", w=8))
         .with_panel(_timeseries(
             "Memory used", "", _prom("redis_memory_used_bytes", "used"), unit="bytes", w=8))
         .with_panel(_timeseries(
             "Clients over time", "", _prom("redis_connected_clients", "clients"), w=8)))
    return d


# Grafana's $__timeFilter(column) is the only macro used, so that sql_queries() can expand it for a plain
# Postgres; `time` columns come from date_trunc().
TURNS_PER_HOUR = """
    SELECT date_trunc('hour', "timestamp") AS time, coalesce(channel, 'unknown') AS metric, count(*) AS turns
    FROM agent_turns
    WHERE $__timeFilter("timestamp")
    GROUP BY 1, 2
    ORDER BY 1
"""
SCORES_PER_HOUR = """
    SELECT date_trunc('hour', "timestamp") AS time,
           avg(quality_score) AS quality, avg(efficiency_score) AS efficiency,
           avg(business_value_score) AS business_value
    FROM agent_turns
    WHERE $__timeFilter("timestamp")
    GROUP BY 1
    ORDER BY 1
"""
SESSIONS_SUMMARY = """
    SELECT count(*) AS sessions,
           count(*) FILTER (WHERE is_final) AS finished,
           avg(turns) AS avg_turns,
           avg(avg_latency_ms) AS avg_latency_ms
    FROM session_kpis
    WHERE $__timeFilter(started_at)
"""
SESSIONS_PER_HOUR = """
    SELECT date_trunc('hour', started_at) AS time, count(*) AS sessions, sum(tool_calls) AS tool_calls
    FROM session_kpis
    WHERE $__timeFilter(started_at)
    GROUP BY 1
    ORDER BY 1
"""
COST_PER_ACCOUNT = """
    SELECT account_id, sum(turns) AS turns, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out,
           sum(tool_invocations) AS tool_invocations, sum(estimated_cost_usd) AS cost_usd
    FROM billing_usage
    WHERE $__timeFilter(hour_start)
    GROUP BY account_id
    ORDER BY cost_usd DESC
    LIMIT 50
"""
COST_PER_HOUR = """
    SELECT hour_start AS time, sum(estimated_cost_usd) AS cost_usd, sum(tokens_in + tokens_out) AS tokens
    FROM billing_usage
    WHERE $__timeFilter(hour_start)
    GROUP BY 1
    ORDER BY 1
"""
# Sessions that reached at least each stage (furthest_stage is the furthest a session got).
FUNNEL = """
    WITH stages (stage, stage_order) AS (
        VALUES ('page_view', 1), ('widget_open', 2), ('user_message', 3), ('product_interest', 4), ('conversion', 5)
    ), reached AS (
        SELECT s.stage_order
        FROM frontend_session_engagement e
        JOIN stages s ON s.stage = e.furthest_stage
        WHERE $__timeFilter(e.started_at)
    )
    SELECT stages.stage, count(reached.stage_order) AS sessions
    FROM stages
    LEFT JOIN reached ON reached.stage_order >= stages.stage_order
    GROUP BY stages.stage, stages.stage_order
    ORDER BY stages.stage_order
"""
ENGAGEMENT_SUMMARY = """
    SELECT count(*) AS sessions,
           avg(events) AS avg_events,
           avg(duration_ms) / 1000.0 AS avg_duration_s,
           count(*) FILTER (WHERE furthest_stage = 'conversion')::float / nullif(count(*), 0) AS conversion_rate
    FROM frontend_session_engagement
    WHERE $__timeFilter(started_at)
"""
# Lead tables are a snapshot of Marketo: no time filter.
LEAD_SCORES = """
    SELECT CASE WHEN band = 9 THEN '90-100' ELSE format('%s-%s', band * 10, band * 10 + 9) END AS score,
           count(*) AS leads
    FROM (SELECT least(lead_quality_score / 10, 9) AS band
          FROM marketo_leads
          WHERE lead_quality_score IS NOT NULL) AS banded
    GROUP BY band
    ORDER BY band
"""
LEADS_BY_ACTION = """
    SELECT coalesce(recommended_action, 'none') AS recommended_action,
           coalesce(engagement_level, 'unknown') AS engagement_level,
           count(*) AS leads,
           round(avg(lead_quality_score)) AS avg_score,
           round(avg(conversion_probability)::numeric, 3) AS avg_conversion_probability
    FROM marketo_leads
    GROUP BY 1, 2
    ORDER BY leads DESC, 1, 2
"""


def business_kpis() -> dashboard.Dashboard:
    d = (_base("iheardai-business-kpis", "iheardAI business KPIs",
               "Turns, sessions, usage and cost per account, the frontend funnel and lead scores, from the "
               "tables the pipelines write (sql/*.sql).", ["business", "postgres"])
         .time("now-24h", "now").refresh("5m")
         .with_variable(_datasource_variable("postgres", "Postgres", POSTGRES_TYPE)))
    sql = dict(datasource=POSTGRES)
    d = (d.with_row(dashboard.Row("Agent turns and sessions"))
         .with_panel(_timeseries("Turns per hour by channel", "agent_turns rows per event-time hour.",
                                 _Sql(TURNS_PER_HOUR, "time_series"), stack=True, **sql))
         .with_panel(_timeseries("Average turn scores per hour", "quality, efficiency and business value (0-100).",
                                 _Sql(SCORES_PER_HOUR, "time_series"), maximum=100, **sql))
         .with_panel(_stat("Sessions", "session_kpis rows started in the time range (finished: is_final).",
                           _Sql(SESSIONS_SUMMARY), w=12, **sql))
         .with_panel(_timeseries("Sessions started per hour", "", _Sql(SESSIONS_PER_HOUR, "time_series"),
                                 w=12, h=4, **sql)))
    d = (d.with_row(dashboard.Row("Usage and cost"))
         .with_panel(_table("Tokens and cost per account", "billing_usage summed over the hours in the range "
                            "(the latest revision of each hour).", _Sql(COST_PER_ACCOUNT), **sql))
         .with_panel(_timeseries("Cost and tokens per hour", "", _Sql(COST_PER_HOUR, "time_series"), **sql)))
    d = (d.with_row(dashboard.Row("Frontend funnel"))
         .with_panel(_bars("Funnel: sessions reaching each stage", "frontend_session_engagement.furthest_stage.",
                           _Sql(FUNNEL), x_field="stage"))
         .with_panel(_stat("Engagement", "Sessions, events and duration per session, conversion rate.",
                           _Sql(ENGAGEMENT_SUMMARY), w=12, h=8, **sql)))
    d = (d.with_row(dashboard.Row("Leads"))
         .with_panel(_bars("Lead quality score distribution", "marketo_leads.lead_quality_score in bands of 10.",
                           _Sql(LEAD_SCORES), x_field="score"))
         .with_panel(_table("Leads by recommended action", "", _Sql(LEADS_BY_ACTION), **sql)))
    return d


DASHBOARDS: Dict[str, Callable[[], dashboard.Dashboard]] = {
    "pipeline-overview": pipeline_overview,
    "kafka-metrics": kafka_metrics,
    "database-performance": database_performance,
    "business-kpis": business_kpis,
}


# --- rendering -------------------------------------------------------------------------------------------

def dashboard_json(name: str) -> Dict[str, object]:
    """The dashboard as Grafana's JSON model, with panel ids numbered in order."""
    doc = json.loads(json.dumps(DASHBOARDS[name]().build(), cls=JSONEncoder))
    for i, panel in enumerate(doc["panels"], start=1):
        panel["id"] = i
    return doc


def _dump_json(doc: Dict[str, object]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (dashboard JSON, PromQL) as literal blocks, so the generated YAML reads and diffs well."""


def _str(dumper, value):
    style = "|" if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _k8s_manifests() -> str:
    """Dashboard ConfigMaps for Grafana's sidecar and the alert rules as a PrometheusRule (Prometheus Operator)."""
    docs = []
    for name in DASHBOARDS:
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": f"iheardai-dashboard-{name}", "labels": {"grafana_dashboard": "1"},
                                  "annotations": {"grafana_folder": "iheardAI"}},
                     "data": {f"iheardai-{name}.json": _dump_json(dashboard_json(name))}})
    groups = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    docs.append({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                 "metadata": {"name": "iheardai-alerts", "labels": {"release": "prometheus"}},
                 "spec": {"groups": groups}})
    header = ("# GENERATED by `python -m observability.dashboards` from observability/dashboards.py and\n"
              "# observability/rules/*.yml: do not edit (tests/unit/test_dashboards.py fails when it is stale).\n"
              "# Grafana dashboards as ConfigMaps (kube-prometheus-stack's dashboard sidecar loads those labelled\n"
              "# grafana_dashboard=\"1\") and the alert rules as a PrometheusRule (label release=prometheus: the\n"
              "# ruleSelector of a kube-prometheus-stack release named prometheus; adjust to yours).\n")
    return header + "".join("---\n" + yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=4096) for d in docs)


def render() -> Dict[Path, str]:
    """Every generated file and its content."""
    out = {OUT_DIR / f"{name}.json": _dump_json(dashboard_json(name)) for name in DASHBOARDS}
    out[K8S_FILE] = _k8s_manifests()
    return out


def stale() -> List[Path]:
    return [p for p, text in render().items() if not p.is_file() or p.read_text() != text]


def write() -> List[Path]:
    changed = stale()
    for path, text in render().items():
        if path in changed:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return changed


# --- queries ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PanelQuery:
    dashboard: str  # the dashboard's name (DASHBOARDS key)
    panel: str      # the panel's title
    ref_id: str
    expr: str       # PromQL or SQL as Grafana runs it, variables replaced
    format: str     # time_series or table


# What Grafana puts in for each variable when every value is selected.
_PROM_VARIABLES = {"$pipeline": "|".join(PIPELINES), "$group": ".*"}


def _targets(kind: str):
    for name in DASHBOARDS:
        for panel in dashboard_json(name)["panels"]:
            for t in panel.get("targets", []):
                if kind == "prometheus" and "expr" in t:
                    yield name, panel["title"], t["refId"], t["expr"], t.get("format", "time_series")
                elif kind == "sql" and "rawSql" in t:
                    yield name, panel["title"], t["refId"], t["rawSql"], t["format"]


def prometheus_queries() -> List[PanelQuery]:
    """Every Prometheus panel query of the four dashboards, with the dashboard variables set to all values."""
    out = []
    for name, title, ref, expr, fmt in _targets("prometheus"):
        for var, value in _PROM_VARIABLES.items():
            expr = expr.replace(var, value)
        out.append(PanelQuery(name, title, ref, expr, fmt))
    return out


_TIME_FILTER = re.compile(r"\$__timeFilter\(([^)]+)\)")


def sql_queries(hours: int = 24) -> List[PanelQuery]:
    """Every SQL panel query, with $__timeFilter(col) expanded to the last `hours` as Grafana does."""
    out = []
    for name, title, ref, sql, fmt in _targets("sql"):
        sql = _TIME_FILTER.sub(lambda m: f"{m.group(1)} BETWEEN now() - interval '{int(hours)} hours' AND now()",
                               sql)
        out.append(PanelQuery(name, title, ref, sql, fmt))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m observability.dashboards", description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale; write nothing")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale()
        for p in bad:
            print(f"stale: {p.relative_to(REPO)} (run `python -m observability.dashboards`)", file=sys.stderr)
        return 1 if bad else 0
    for p in write():
        print(f"wrote {p.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prometheus series for /metrics. Each app gets its own registry, so two servers in one process never mix counts.

The names below are what configs/grafana/tunesmith-serve.json queries (a test checks both agree).
"""

from __future__ import annotations

from typing import Any

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServeMetrics:
    """Counters, gauges and histograms of one server (latencies in seconds, sizes in tokens)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("tunesmith_requests", "Requests by model and HTTP status.", ["model", "status"], registry=r)
        self.errors = Counter("tunesmith_errors", "Error responses by type.", ["type"], registry=r)
        self.latency = Histogram(
            "tunesmith_request_latency_seconds", "Arrival to last token.", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "tunesmith_time_to_first_token_seconds", "Arrival to first token.", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("tunesmith_prompt_tokens", "Prompt tokens.", ["model"], registry=r)
        self.completion_tokens = Counter("tunesmith_completion_tokens", "Generated tokens.", ["model"], registry=r)
        self.queue_depth = Gauge("tunesmith_queue_depth", "Requests waiting or running.", registry=r)
        self.batch_size = Histogram(
            "tunesmith_batch_size", "Requests per generate() batch.", buckets=(1, 2, 4, 8, 16, 32), registry=r
        )
        self.retrieval_hits = Counter("tunesmith_retrieval_hits", "Passages retrieved into prompts.", ["model"], registry=r)
        self.retrieval_requests = Counter("tunesmith_retrieval_requests", "Requests that used retrieval.", ["model"], registry=r)
        self.cancelled = Counter("tunesmith_cancelled", "Generations cancelled (client gone or timeout).", ["reason"], registry=r)
        self.ready = Gauge("tunesmith_ready", "1 once the model is loaded and checked.", registry=r)
        self.tool_calls = Counter("tunesmith_tool_calls", "Tool calls returned to clients.", ["model"], registry=r)
        self.tool_calls_unparsable = Counter(
            "tunesmith_tool_calls_unparsable",
            "Outputs that opened a tool call that did not parse (returned as content).",
            ["model"],
            registry=r,
        )

    def observe(
        self,
        model: str,
        status: int,
        latency_s: float | None = None,
        ttft_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        self.requests.labels(model, str(status)).inc()
        if latency_s is not None:
            self.latency.labels(model).observe(latency_s)
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
        if prompt_tokens:
            self.prompt_tokens.labels(model).inc(prompt_tokens)
        if completion_tokens:
            self.completion_tokens.labels(model).inc(completion_tokens)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "summary": ("_sum", "_count")}


def exported_names(exposition: str) -> set[str]:
    """Series names a /metrics text declares (from its # TYPE lines, so labelled series with no samples yet count)."""
    out: set[str] = set()
    for line in exposition.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            family = parts[2].removesuffix("_total") if parts[3] == "counter" else parts[2]
            out.update(family + suffix for suffix in SUFFIXES.get(parts[3], ("",)))
    return out


def metric_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression in a Grafana dashboard JSON."""
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dashboard)
    return exprs

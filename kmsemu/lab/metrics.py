"""The lab's Prometheus metrics (``GET /metrics``), in a registry of its own.

Counters and histograms are updated as requests are answered; gauges
(counts, MAK keys, connections, the lab clock) are read when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kmsemu.host.rules import client_hresult
from kmsemu.host.store import LoggedRequest

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class LabMetrics:
    """The lab's counters and histograms, plus gauges read from the lab when scraped."""

    def __init__(self, product_names: dict[bytes, str], gauges: Callable[[], LabGauges]) -> None:
        self.registry = CollectorRegistry()
        self._products = product_names
        self.kms_requests = Counter(
            "kmsemu_kms_requests",
            "KMS requests answered, by product and by the HRESULT the "
            "client ends with (0xC004F038 when the count is below its threshold)",
            ["product", "result"],
            registry=self.registry,
        )
        self.kms_latency = Histogram(
            "kmsemu_kms_request_duration_seconds",
            "Time the host took to answer a KMS request",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "kmsemu_http_requests",
            "HTTP requests (MAK service, portal, dashboard)",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "kmsemu_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Gauges(gauges))

    def observe_kms(self, logged: LoggedRequest, elapsed: float) -> None:
        """Count an answered KMS request by product and client result; time it."""
        record, q = logged.record, logged.record.request
        result, product = record.status, "unknown"
        if q is not None:
            product = self._products.get(q.sku_id, "unknown")
            result = client_hresult(record.status, record.current_count, q.required_client_count)
        self.kms_requests.labels(product, f"0x{result:08X}").inc()
        self.kms_latency.observe(elapsed)

    def observe_http(self, route: str, method: str, status: int, elapsed: float) -> None:
        """Count an HTTP request by route, method and status; time it."""
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_latency.labels(route).observe(elapsed)

    def render(self) -> bytes:
        """The registry in Prometheus's text format, for ``GET /metrics``."""
        return generate_latest(self.registry)


class LabGauges:
    """What a scrape reads from the running lab."""

    def __init__(
        self,
        *,
        counts: dict[str, int],
        connections: int,
        mak_keys: Iterable[dict[str, Any]],
        clock_offset: float,
        dns_queries: dict[str, int],
        host_faults: dict[str, int] | None = None,
        host_store_failures: int = 0,
        host_pending_rows: int = 0,
    ) -> None:
        self.counts = counts
        self.connections = connections
        self.mak_keys = list(mak_keys)
        self.clock_offset = clock_offset
        self.dns_queries = dns_queries
        self.host_faults = host_faults or {}
        self.host_store_failures = host_store_failures
        self.host_pending_rows = host_pending_rows


class _Gauges(Collector):
    def __init__(self, read: Callable[[], LabGauges]) -> None:
        self._read = read

    def describe(self) -> Iterator[Metric]:
        return iter(())  # read only when scraped, not when registered

    def collect(self) -> Iterator[Metric]:
        g = self._read()
        counts = GaugeMetricFamily(
            "kmsemu_kms_count",
            "The host's current count (live CMIDs "
            "of the last 30 days, at least --min-count) per application",
            labels=["application"],
        )
        for name, value in g.counts.items():
            counts.add_metric([name], value)
        yield counts
        yield GaugeMetricFamily(
            "kmsemu_kms_connections", "Open KMS connections", value=g.connections
        )
        remaining = GaugeMetricFamily(
            "kmsemu_mak_remaining", "Activations a MAK has left", labels=["key", "product"]
        )
        used = GaugeMetricFamily(
            "kmsemu_mak_used", "Machines counted against a MAK", labels=["key", "product"]
        )
        for key in g.mak_keys:
            labels = [f"{key['fingerprint']}-{key['last5']}", str(key.get("product") or "")]
            remaining.add_metric(labels, key["remaining"])
            used.add_metric(labels, key["used"])
        yield remaining
        yield used
        yield GaugeMetricFamily(
            "kmsemu_lab_clock_offset_seconds",
            "How far the lab clock runs ahead of real time",
            value=g.clock_offset,
        )
        dns = CounterMetricFamily(
            "kmsemu_dns_queries",
            "DNS messages, by transport (dropped: not answered)",
            labels=["transport"],
        )
        for transport, value in sorted(g.dns_queries.items()):
            dns.add_metric([transport], value)
        yield dns
        faults = CounterMetricFamily(
            "kmsemu_host_faults",
            "Faults the KMS host fired on demand (kmsemu host fault), by kind",
            labels=["kind"],
        )
        for kind, value in sorted(g.host_faults.items()):
            faults.add_metric([kind], value)
        yield faults
        yield CounterMetricFamily(
            "kmsemu_host_store_failures",
            "Flushes of the KMS host's request log that the database refused (a full disk...)",
            value=g.host_store_failures,
        )
        yield GaugeMetricFamily(
            "kmsemu_host_pending_rows",
            "Request-log rows the KMS host holds for the database (bounded; past the bound "
            "it takes no new requests)",
            value=g.host_pending_rows,
        )

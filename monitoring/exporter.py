"""Each worker's Prometheus /metrics: the log record of every interval, as the metrics of monitoring.metrics.

The exporter holds its own registry (nothing global), serves it over HTTP from a background thread, and
is updated once per log interval, so scraping costs the training loop nothing between intervals.
"""

import errno
import json
import math

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from dataloading import storage

from .metrics import METRICS, Metric


class PrometheusExporter:
    def __init__(self, *, run: str, rank: int | str, host: str = "127.0.0.1", port: int = 0):
        """Serve on host:port, or on a free port when `port` is 0 or taken (see `self.port`)."""
        self.run, self.rank, self.host = run, str(rank), host
        self.registry = CollectorRegistry(auto_describe=True)
        self._families = {metric.name: _family(metric, self.registry) for metric in METRICS}
        self._server, self._thread = _serve(self.registry, host, port)
        self.port = self._server.server_port

    def update(self, record: dict, rank_record: dict) -> None:
        """Set the gauges and advance the counters from a run-wide record and this worker's own values."""
        values = {**record, **{f"rank/{key}": value for key, value in rank_record.items()}}
        values = {key: value for key, value in values.items() if isinstance(value, (int, float))}
        for metric in METRICS:
            family = self._families[metric.name]
            if metric.label is None:
                if metric.key in values:
                    self._apply(metric, family.labels(self.run, self.rank), values[metric.key])
                continue
            for key, value in values.items():
                if key.startswith(metric.key) and "/" not in key[len(metric.key):]:
                    self._apply(metric, family.labels(self.run, self.rank, key[len(metric.key):]), value)

    @staticmethod
    def _apply(metric: Metric, child, value: float) -> None:
        if metric.kind == "gauge":
            child.set(float(value))  # NaN and Inf pass: the non-finite-loss alert looks for them
        elif math.isfinite(value) and value >= 0:  # inc(0) too: a counter that stays at 0 is still exported
            child.inc(float(value))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _family(metric: Metric, registry: CollectorRegistry):
    labels = ["run", "rank"] + ([metric.label] if metric.label else [])
    if metric.kind == "counter":  # prometheus_client appends the _total itself
        return Counter(metric.name.removesuffix("_total"), metric.help, labels, registry=registry)
    return Gauge(metric.name, metric.help, labels, registry=registry)


def _serve(registry: CollectorRegistry, host: str, port: int):
    try:
        return start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        if port == 0 or error.errno != errno.EADDRINUSE:
            raise OSError(f"cannot serve metrics on {host}:{port}: {error}") from error
        return start_http_server(0, addr=host, registry=registry)


# --- where a local Prometheus finds the workers ----------------------------------------------------------

TARGETS_FOLDER = "prometheus-targets"


def targets_url(storage_url: str, run_name: str) -> str:
    """The file_sd file of a run: monitoring/prometheus/local.yml reads every file in this folder."""
    return storage.join(storage_url, TARGETS_FOLDER, f"{run_name}.json")


def write_targets(url: str, run_name: str, endpoints: dict) -> None:
    """Prometheus file_sd targets, one per rank ({rank: (host, port)}), labelled with the run and the rank."""
    groups = [{"targets": [f"{_reachable(host)}:{port}"], "labels": {"run": run_name, "rank": str(rank)}}
              for rank, (host, port) in endpoints.items()]
    storage.makedirs(storage.parent(url))
    storage.write_bytes_atomic(url, (json.dumps(groups, indent=2) + "\n").encode())


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host

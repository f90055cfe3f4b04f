"""Exports metrics the way any OpenTelemetry application does: the official Python SDK and its stock OTLP/HTTP
protobuf exporter, over mutual TLS. Used by the control plane's tests to show that its receiver takes a standard
exporter's output, not only edgefleet-daemon's: default histogram buckets in milliseconds, int counters, and a
metric of the application's own that edgefleet does not keep.

    python otel_sdk_export.py ENDPOINT CA_PEM CERT_PEM KEY_PEM DEVICE_ID
"""
import sys

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource


class Recording(OTLPMetricExporter):
    """The stock exporter, remembering whether every export succeeded."""

    failed = 0

    def export(self, metrics_data, timeout_millis=10_000, **kwargs):
        result = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        if result != MetricExportResult.SUCCESS:
            Recording.failed += 1
        return result


def main(endpoint, ca, cert, key, device):
    exporter = Recording(endpoint=endpoint, certificate_file=ca, client_certificate_file=cert, client_key_file=key)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
    resource = Resource.create({"device.id": device, "edgefleet.device.class": "x86-server"})
    provider = MeterProvider(metric_readers=[reader], resource=resource)
    meter = provider.get_meter("a-stock-python-app")
    target = {"model": "magika", "release": 1, "variant": "cpu-fp32", "provider": "CPUExecutionProvider"}
    count = meter.create_counter("edgefleet.inference.count")
    duration = meter.create_histogram("edgefleet.inference.duration", unit="ms")
    for _ in range(7):
        count.add(1, {**target, "outcome": "ok"})
        duration.record(8.0, target)
    count.add(1, {**target, "outcome": "error"})
    meter.create_counter("app.requests").add(3, {"path": "/"})
    provider.shutdown()
    if Recording.failed:
        print(f"{Recording.failed} export(s) failed", file=sys.stderr)
        sys.exit(1)
    print("exported")


if __name__ == "__main__":
    main(*sys.argv[1:6])

"""Prometheus metrics of a worker, served at ``/metrics`` beside ``/health``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        # Each Metrics owns its registry, so tests can build many without name clashes.
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.events_in = Counter("singtome_events_in", "Events received", ["stage"], registry=reg)
        self.events_out = Counter(
            "singtome_events_out", "Output events sent", ["stage"], registry=reg
        )
        self.events_failed = Counter(
            "singtome_events_failed",
            "Events answered by track.failed",
            ["stage", "code"],
            registry=reg,
        )
        self.duplicates = Counter(
            "singtome_duplicate_deliveries",
            "Events seen before (redelivery or replay)",
            ["stage"],
            registry=reg,
        )
        self.retries = Counter(
            "singtome_transient_retries",
            "Retries after transient errors",
            ["stage"],
            registry=reg,
        )
        self.stage_seconds = Histogram(
            "singtome_stage_seconds",
            "Time to handle one event",
            ["stage"],
            registry=reg,
            buckets=(0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
        )
        self.consumer_lag = Gauge(
            "singtome_consumer_lag",
            "Messages behind the highwater, per partition",
            ["stage", "topic", "partition"],
            registry=reg,
        )
        self.busy = Gauge("singtome_busy", "1 while a job is in hand", ["stage"], registry=reg)
        self.send_failures = Counter(
            "singtome_send_failures",
            "Sends the broker did not acknowledge through every retry (or refused)",
            ["stage", "topic"],
            registry=reg,
        )
        self.unanswered = Counter(
            "singtome_unanswered",
            "Messages left uncommitted because no answer could be sent",
            ["stage"],
            registry=reg,
        )
        self.claim_checks = Counter(
            "singtome_dlq_claim_checks",
            "DLQ copies kept in S3 (too large for the broker) with a reference in the DLQ topic",
            ["stage"],
            registry=reg,
        )
        self.stuck_calls = Counter(
            "singtome_stuck_stage_calls",
            "Stage calls still running after SINGTOME_STAGE_TIMEOUT_S",
            ["stage"],
            registry=reg,
        )
        self.device = Gauge(
            "singtome_device_info",
            "1 for the device the stage runs on (SINGTOME_DEVICE resolved at start)",
            ["stage", "device"],
            registry=reg,
        )

"""Prometheus metrics (SPEC §8), held in one registry owned by the app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]


class Metrics:
    """The counters and histograms Herald exports on `/metrics`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "herald_events",
            "Events consumed, by trigger and outcome.",
            ["trigger", "outcome"],
            registry=r,
        )
        self.actions = Counter(
            "herald_actions",
            "Actions run, by action and outcome.",
            ["action", "outcome"],
            registry=r,
        )
        self.emails = Counter(
            "herald_emails",
            "Emails, by template and outcome.",
            ["template", "outcome"],
            registry=r,
        )
        self.smtp_retries = Counter(
            "herald_smtp_retries",
            "Email retries scheduled on the retry topic after a transient failure.",
            registry=r,
        )
        self.retries_pending = Gauge(
            "herald_retries_pending",
            "Scheduled email retries read from the retry topic and not yet finished.",
            registry=r,
        )
        self.dlq = Counter("herald_dlq", "Dead-lettered events, by reason.", ["reason"], registry=r)
        self.event_duration = Histogram(
            "herald_event_duration_seconds",
            "Time from receiving an event to finishing its flow.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )

        self.paused = Gauge(
            "herald_consumption_paused",
            "1 while consumption is paused because the SMTP server is unreachable.",
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

"""Prometheus metrics (README: Operations), held in one registry owned by the app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["LabelledCounter", "Metrics"]


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
            "Emails, by template and outcome: sent; duplicate (already sent, not again); "
            "uncertain (handed to the server, its reply never came; not sent again); "
            "deferred (a transient failure, retried from the retry topic); rejected (a "
            "permanent failure); retries_exhausted; rate_limited (skipped); expired (its "
            "link expired, skipped); render_error (the template failed).",
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
        self.retry_oldest = Gauge(
            "herald_retry_oldest_seconds",
            "Seconds since the oldest retry item read from the retry topic and not yet "
            "finished was written there (its record timestamp); 0 when none.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "herald_consumer_lag",
            "Records behind the end of each assigned input partition (its last known "
            "end offset minus the consumer's position), as of the last batch.",
            ["topic", "partition"],
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


class LabelledCounter:
    """A labelled prometheus Counter whose children are looked up once per label values.

    `Counter.labels(...)` validates and locks on every call (a few µs); the children it
    returns live as long as the counter, so they are kept here. Label values must come
    from a bounded set (config names, fixed outcomes), as for any Prometheus label.
    """

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._children: dict[tuple[str, ...], Counter] = {}

    def inc(self, *labels: str) -> None:
        """Add one to the child of `labels`."""
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._counter.labels(*labels)
        child.inc()

"""Prometheus metrics for the gateway: requests, latency, tokens, errors, restarts, aliases.

Each gateway owns a registry of its own (not the process-global one), so tests and
several apps in one process do not collide; `GET /metrics` renders it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from repotune.cycles import Health

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "repotune_requests", "Requests by route, model asked for and status.", ["route", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "repotune_request_seconds", "Time to the full response (streams: to the last byte).", ["route"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=r,
        )
        self.tokens = Counter("repotune_tokens", "Tokens by kind, where usage was reported.", ["kind"], registry=r)
        self.errors = Counter("repotune_errors", "Error responses by OpenAI error type.", ["type"], registry=r)
        self.running = Gauge("repotune_requests_running", "Requests being answered now.", registry=r)
        self.queued = Gauge("repotune_requests_queued", "Requests waiting for their key's turn.", registry=r)
        self.engine_restarts = Gauge("repotune_engine_restarts", "Times the engine was restarted.", registry=r)
        self.policy = Counter(
            "repotune_policy_requests", "Requests the domain policy allowed or refused, by reason.",
            ["decision", "reason"], registry=r,
        )
        self.alias_version = Gauge(
            "repotune_alias_version", "The version each lineage alias serves.", ["lineage"], registry=r
        )
        self.cycle_success = Gauge(
            "repotune_cycle_last_success_timestamp_seconds", "When the lineage's last cycle that did not fail "
            "ended (Unix time).", ["lineage"], registry=r,
        )
        self.cycle_failures = Gauge(
            "repotune_cycle_failures_in_a_row", "The lineage's cycles that failed or were killed since the last "
            "that did not.", ["lineage"], registry=r,
        )
        self.cycle_decision = Gauge(
            "repotune_cycle_last_decision", "1 on the gate's last decision in a cycle (promoted or rejected).",
            ["lineage", "decision"], registry=r,
        )

    def set_cycles(self, health: list[Health]) -> None:
        """The loop's state from the store (`repotune.cycles.health`)."""
        from datetime import datetime

        for h in health:
            if h.last_success:
                self.cycle_success.labels(h.lineage).set(datetime.fromisoformat(h.last_success).timestamp())
            self.cycle_failures.labels(h.lineage).set(h.failures_in_a_row)
            for decision in ("promoted", "rejected"):
                self.cycle_decision.labels(h.lineage, decision).set(1 if h.last_decision == decision else 0)

    def count_usage(self, payload: bytes) -> None:
        """Add the `usage` of a response body or of the SSE chunks that carry one."""
        if b'"usage"' not in payload:
            return
        for part in payload.split(b"\n"):
            part = part.removeprefix(b"data: ").strip()
            if not part.startswith(b"{") or b'"usage"' not in part:
                continue
            try:
                usage = json.loads(part).get("usage")
            except ValueError:
                continue
            self.add_usage(usage)

    def add_usage(self, usage: object) -> None:
        """Add one response's `usage` object (anything else is ignored)."""
        if isinstance(usage, dict):
            self.tokens.labels("prompt").inc(usage.get("prompt_tokens") or 0)
            self.tokens.labels("completion").inc(usage.get("completion_tokens") or 0)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))

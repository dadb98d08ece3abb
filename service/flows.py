"""Flows: a trigger's actions run in order over one event, collected into a FlowResult."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import ChainableUndefined
from jinja2.sandbox import SandboxedEnvironment

from service.config import BaseAction, Config
from service.events import Event
from service.metrics import Metrics

__all__ = [
    "ActionFailed",
    "CompiledAction",
    "FlowEngine",
    "FlowResult",
    "RunContext",
    "event_view",
    "expression_env",
]

log = logging.getLogger(__name__)


class ActionFailed(Exception):
    """An action could not complete; `error` is its class for the DLQ and metrics."""

    def __init__(self, error: str, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


@dataclass
class FlowResult:
    """What a flow decided and changed; published once, when the flow ends."""

    decision: str = "allow"
    reason: str | None = None
    user_message: str | None = None
    redirect: dict[str, Any] | None = None
    user_metadata: dict[str, Any] = field(default_factory=dict)
    app_metadata: dict[str, Any] = field(default_factory=dict)
    actions: list[dict[str, str]] = field(default_factory=list)
    failure: ActionFailed | None = None

    @property
    def stopped(self) -> bool:
        return self.decision == "deny" or self.failure is not None


@dataclass(frozen=True, slots=True)
class RunContext:
    """One event as the actions of its flow see it."""

    event: Event
    view: Mapping[str, Any]
    secrets: Mapping[str, str]
    result: FlowResult


ActionFn = Callable[[RunContext], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class CompiledAction:
    """A configured action, its `when` compiled once, ready to run."""

    config: BaseAction
    run: ActionFn
    when: Callable[..., Any] | None


def expression_env() -> SandboxedEnvironment:
    """The sandbox that evaluates `when` and `to`: missing fields are falsy, not errors."""
    return SandboxedEnvironment(undefined=ChainableUndefined)


def event_view(event: Event, secrets: Mapping[str, str]) -> dict[str, Any]:
    """The Auth0-shaped `event`: data fields (`user`, `request`, …) at the top level,
    next to the CloudEvents attributes (`id`, `time`, …), `data` and `secrets`."""
    attributes = {k: v for k, v in event.envelope.items() if k != "data"}
    return {
        **event.data,
        **attributes,
        "data": event.data,
        "trigger": event.trigger.name,
        "secrets": dict(secrets),
    }


class FlowEngine:
    """Runs the configured flow of each event's trigger."""

    def __init__(
        self, config: Config, flows: Mapping[str, list[CompiledAction]], metrics: Metrics
    ) -> None:
        self.secrets = config.secrets
        self.flows = flows
        self.metrics = metrics

    async def run(self, event: Event) -> FlowResult:
        """Run every enabled action whose `when` holds, in order, until one stops the flow."""
        result = FlowResult()
        ctx = RunContext(event, event_view(event, self.secrets), self.secrets, result)
        for action in self.flows.get(event.trigger.name, []):
            outcome = await self._run_one(action, ctx)
            result.actions.append({"id": action.config.id, "outcome": outcome})
            self.metrics.actions.labels(action.config.action, outcome).inc()
            if result.stopped:
                break
        return result

    async def _run_one(self, action: CompiledAction, ctx: RunContext) -> str:
        cfg = action.config
        if not cfg.enabled:
            return "disabled"
        try:
            if action.when is not None and not _holds(action.when, ctx.view):
                return "skipped"
            async with asyncio.timeout(cfg.timeout_s):
                return await action.run(ctx)
        except ActionFailed as exc:
            ctx.result.failure = exc
        except TimeoutError:
            ctx.result.failure = ActionFailed(
                "ActionTimeout", f"action {cfg.id!r} ran past its timeout of {cfg.timeout_s}s"
            )
        except Exception as exc:  # an action's own bug: contained, dead-lettered, counted
            log.warning("action raised", exc_info=exc, extra={"action": cfg.id})
            ctx.result.failure = ActionFailed(type(exc).__name__, f"action {cfg.id!r}: {exc}")
        return "failed"


def _holds(when: Callable[..., Any], view: Mapping[str, Any]) -> bool:
    try:
        return bool(when(event=view, user=view.get("user"), secrets=view.get("secrets")))
    except Exception as exc:
        # Fail rather than skip: a silently skipped security email is the worse outcome.
        raise ActionFailed("WhenError", f"`when` could not be evaluated: {exc}") from None

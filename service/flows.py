"""Flows: a trigger's actions run in order over one event, collected into a FlowResult."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from service.config import BaseAction, Config
from service.events import Event
from service.failures import ActionFailed, Outage
from service.metrics import LabelledCounter, Metrics
from service.redaction import redact

if TYPE_CHECKING:
    from service.mail.request import EmailRequest

__all__ = [
    "CompiledAction",
    "FlowEngine",
    "FlowResult",
    "RunContext",
    "event_view",
]

log = logging.getLogger(__name__)


FAILED_USER_MESSAGE = "Something went wrong. Please try again later."


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
    #: Emails whose first attempt failed transiently, with the reason: scheduled for retry.
    deferred: list[tuple[EmailRequest, str]] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        return self.decision == "deny" or self.failure is not None

    def fail_closed(self) -> None:
        """Turn a failed synchronous flow into a denial, as Auth0 does."""
        self.decision = "deny"
        self.reason = "action_failed"
        self.user_message = FAILED_USER_MESSAGE
        self.redirect = None

    def decision_body(self, event: Event) -> dict[str, Any]:
        """The decision JSON Herald publishes (README: Outputs: metadata commands and decisions)."""
        return {
            "event_id": event.id,
            "trigger": event.trigger.name,
            "decision": self.decision,
            "reason": self.reason,
            "user_message": self.user_message,
            "user_metadata": self.user_metadata,
            "app_metadata": self.app_metadata,
            "redirect": self.redirect,
        }


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


def event_view(event: Event, secrets: Mapping[str, str]) -> dict[str, Any]:
    """The Auth0-shaped `event`: data fields (`user`, `request`, …) at the top level,
    next to the CloudEvents attributes (`id`, `time`, …), `data` and `secrets`.

    Data fields come last: an envelope attribute never shadows one. The producer picks
    extension attribute names freely, and one named `user` must not send mail to an
    address other than `data.user.email`, which logs and commands name. An attribute
    whose name data uses is still in the record, just not under `event.<name>`.
    """
    attributes = {k: v for k, v in event.envelope.items() if k != "data"}
    return {
        **attributes,
        **event.data,
        "data": event.data,
        "trigger": event.trigger.name,
        "secrets": dict(secrets),
    }


class FlowEngine:
    """Runs the configured flow of each event's trigger."""

    def __init__(
        self,
        config: Config,
        flows: Mapping[str, list[CompiledAction]],
        metrics: Metrics,
        mailer: Any = None,
    ) -> None:
        self.secrets = config.secrets
        #: The Mailer the flows' email actions use (scheduled retries use it too).
        self.mailer = mailer
        self.flows = flows
        self.metrics = metrics
        self._actions = LabelledCounter(metrics.actions)

    async def run(self, event: Event) -> FlowResult:
        """Run every enabled action whose `when` holds, in order, until one stops the flow.

        A failure on a synchronous trigger becomes `deny` / `action_failed` (fail closed,
        as Auth0 does); on an asynchronous one it stays in `failure` for the dead letter.
        """
        result = FlowResult()
        ctx = RunContext(event, event_view(event, self.secrets), self.secrets, result)
        for action in self.flows.get(event.trigger.name, []):
            outcome = await self._run_one(action, ctx)
            result.actions.append({"id": action.config.id, "outcome": outcome})
            self._actions.inc(action.config.action, outcome)
            if result.stopped:
                break
        if result.failure is not None:
            result.failure.reason = redact(result.failure.reason, self.secrets)
            if event.trigger.synchronous:
                result.fail_closed()
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
        except Outage:
            raise
        except ActionFailed as exc:
            ctx.result.failure = exc
        except TimeoutError:
            ctx.result.failure = ActionFailed(
                "ActionTimeout", f"action {cfg.id!r} ran past its timeout of {cfg.timeout_s}s"
            )
        except Exception as exc:  # an action's own bug: contained, counted, never a crash
            ctx.result.failure = ActionFailed(type(exc).__name__, f"action {cfg.id!r}: {exc}")
        log.warning(
            "action failed",
            extra={
                "event_id": ctx.event.id,
                "trigger": ctx.event.trigger.name,
                "action": cfg.id,
                "error": ctx.result.failure.error if ctx.result.failure else None,
                "reason": redact(ctx.result.failure.reason, self.secrets)
                if ctx.result.failure
                else None,
            },
        )
        return "failed"


def _holds(when: Callable[..., Any], view: Mapping[str, Any]) -> bool:
    try:
        return bool(when(event=view, user=view.get("user"), secrets=view.get("secrets")))
    except Exception as exc:
        # Fail rather than skip: a silently skipped security email is the worse outcome.
        raise ActionFailed("WhenError", f"`when` could not be evaluated: {exc}") from None

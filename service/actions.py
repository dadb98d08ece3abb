"""The built-in actions (README: "Flows and actions"), compiled once from config into
runnable steps."""

from __future__ import annotations

from typing import Any

from service.config import (
    BaseAction,
    Config,
    DenyAction,
    PythonAction,
    RedirectAction,
    SendEmailAction,
    SetMetadataAction,
)
from service.failures import ActionFailed, EmailDeferred, EmailFailed
from service.flows import ActionFn, CompiledAction, RunContext
from service.mail.mailer import Mailer
from service.mail.render import template_context
from service.mail.request import EmailRequest
from service.sandbox import expression_env

__all__ = ["compile_flows"]


def compile_flows(config: Config, mailer: Mailer) -> dict[str, list[CompiledAction]]:
    """Every flow of `config`, its expressions compiled and its actions bound."""
    env = expression_env()
    return {
        trigger: [
            CompiledAction(
                config=action,
                run=_bind(action, mailer, env),
                when=env.compile_expression(action.when) if action.when else None,
            )
            for action in actions
        ]
        for trigger, actions in config.flows.items()
    }


def _bind(action: BaseAction, mailer: Mailer, env: Any) -> ActionFn:
    if isinstance(action, SendEmailAction):
        return _send_email(action, mailer, env.compile_expression(action.to))
    if isinstance(action, SetMetadataAction):
        return _set_metadata(action)
    if isinstance(action, DenyAction):
        return _deny(action)
    if isinstance(action, RedirectAction):
        return _redirect(action)
    if isinstance(action, PythonAction):
        from service.python_actions import python_action

        return python_action(action, mailer)
    raise TypeError(f"no implementation for action {action.action!r}")


def _send_email(action: SendEmailAction, mailer: Mailer, to: Any) -> ActionFn:
    async def run(ctx: RunContext) -> str:
        user = ctx.view.get("user") or {}
        context = template_context(ctx.view, ctx.secrets)
        request = EmailRequest(
            event_id=ctx.event.id,
            action_id=action.id,
            template=action.template,
            to=to(**context),
            to_name=user.get("name") or "",
            locale=user.get("locale"),
            context=context,
            sender=action.from_,
            reply_to=action.reply_to,
        )
        try:
            return await mailer.send(request)
        except EmailDeferred as exc:
            ctx.result.deferred.append((request, exc.reason))
            return "deferred"
        except EmailFailed as exc:
            raise ActionFailed(exc.error, exc.reason) from None

    return run


def _set_metadata(action: SetMetadataAction) -> ActionFn:
    async def run(ctx: RunContext) -> str:
        # Merged across the flow's actions: a later value for a key wins, None deletes it
        # (the consumer of the metadata command applies None as a deletion).
        ctx.result.user_metadata.update(action.user_metadata)
        ctx.result.app_metadata.update(action.app_metadata)
        return "applied"

    return run


def _deny(action: DenyAction) -> ActionFn:
    async def run(ctx: RunContext) -> str:
        ctx.result.decision = "deny"
        ctx.result.reason = action.reason
        ctx.result.user_message = action.user_message
        return "denied"

    return run


def _redirect(action: RedirectAction) -> ActionFn:
    async def run(ctx: RunContext) -> str:
        ctx.result.decision = "redirect"
        ctx.result.redirect = {"url": action.url, "query": dict(action.query)}
        return "redirected"

    return run

"""The one place Herald builds a Jinja2 sandbox.

Every Jinja environment Herald uses is a sandbox made by `sandbox()`; the callers differ
only in the settings they pass:

- config validation (`service.config`) and the secrets check (`service.checks.secrets`)
  parse expressions in a plain mutable sandbox, Jinja's defaults;
- flows (`expression_env` in `service.actions`) evaluate `when` and `to` in a mutable
  sandbox with flat globals where a missing field is falsy (`ChainableUndefined`);
- email templates (`service.mail.render`) render in the immutable sandbox (templates may
  read event data, never call into or mutate it), with flat globals and Herald's filters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from jinja2 import ChainableUndefined, filters, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

__all__ = ["DictItems", "FlatGlobals", "expression_env", "sandbox"]


class FlatGlobals:
    """Jinja environment mixin: each template's globals flattened into a plain dict.

    Jinja layers a template's globals over the environment's in a `ChainMap`, so that
    globals changed after loading still show; every render copies that map and every
    `{% from … import … %}` diffs its keys, in Python, per email. Herald sets its globals
    once, before any template loads (as Jinja's documentation asks), so a dict built at
    load time holds the same names and values and costs a C-level copy.
    """

    globals: dict[str, Any]

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        return {**self.globals, **(d or {})}


class DictItems:
    """Jinja environment mixin: `a.b` on a plain dict looks up the item without raising.

    Jinja prefers the attribute: `getattr(a, "b")` first, and `a["b"]` when that raises
    AttributeError. A plain dict has no attributes but its class's, so for any other
    name that raise is certain; event data is dicts all the way down, and a template
    reads a few dozen fields per email. Same result, minus an exception each.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_NAMES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)  # type: ignore[attr-defined]
        return super().getattr(obj, attribute)  # type: ignore[misc]


_DICT_NAMES = frozenset(dir(dict))


class _FlatSandbox(FlatGlobals, DictItems, SandboxedEnvironment):
    """The sandbox, with plain-dict template globals: each evaluation builds a context."""


class _FlatImmutableSandbox(FlatGlobals, DictItems, ImmutableSandboxedEnvironment):
    """The immutable sandbox (templates may read event data, never call into or mutate it)."""


_CLASSES: dict[tuple[bool, bool], type[SandboxedEnvironment]] = {
    (False, False): SandboxedEnvironment,
    (False, True): _FlatSandbox,
    (True, False): ImmutableSandboxedEnvironment,
    (True, True): _FlatImmutableSandbox,
}


def sandbox(
    *,
    immutable: bool = False,
    flat_globals: bool = False,
    filters: Mapping[str, Callable[..., Any]] | None = None,
    **options: Any,
) -> SandboxedEnvironment:
    """A Jinja sandbox: immutable or not, with `FlatGlobals` or not, plus `filters`.

    `options` go to the environment as they are (`undefined`, `loader`, `autoescape`, …).
    """
    env = _CLASSES[immutable, flat_globals](**options)
    if not env.is_async:
        _sync_filters(env)
    if filters:
        env.filters.update(filters)
    return env


def _sync_filters(env: SandboxedEnvironment) -> None:
    """Jinja's built-in filters, called as Jinja calls them in a sync environment, cheaper.

    Filters with an async variant (`join`, `first`, `map`, `select`, …) go through a
    wrapper that asks on every call whether the environment is async; Herald's never
    are, so each is replaced by the plain function the wrapper would pick. `select`,
    `reject`, `selectattr` and `rejectattr` without a test (`| select`: the truthy items)
    skip the exception Jinja raises and catches to find that out.
    """
    for name, func in list(env.filters.items()):
        if getattr(func, "jinja_async_variant", False):
            env.filters[name] = func.__wrapped__
    env.filters.update(
        select=_without_test(filters.sync_do_select, attr=False, keep=True),
        reject=_without_test(filters.sync_do_reject, attr=False, keep=False),
        selectattr=_without_test(filters.sync_do_selectattr, attr=True, keep=True),
        rejectattr=_without_test(filters.sync_do_rejectattr, attr=True, keep=False),
    )


def _without_test(jinja_filter: Callable[..., Any], *, attr: bool, keep: bool) -> Any:
    """`jinja_filter`, with its no-test form (truthiness) done directly."""
    plain = 1 if attr else 0  # the arguments of the no-test form: the attribute, or none

    @pass_context
    def select_or_reject(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) != plain or kwargs:
            return jinja_filter(context, value, *args, **kwargs)
        get = filters.make_attrgetter(context.environment, args[0]) if attr else None
        return _truthy(value, get, keep)

    return select_or_reject


def _truthy(value: Any, get: Callable[[Any], Any] | None, keep: bool) -> Iterator[Any]:
    if value:
        for item in value:
            if bool(get(item) if get else item) is keep:
                yield item


def expression_env() -> SandboxedEnvironment:
    """The sandbox that evaluates `when` and `to`: missing fields are falsy, not errors."""
    return sandbox(flat_globals=True, undefined=ChainableUndefined)

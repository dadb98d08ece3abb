"""service/sandbox.py: the sandboxes answer as Jinja's own do, the fast dict path included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from jinja2 import ChainableUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

from service.sandbox import sandbox

DATA: dict[str, Any] = {
    "user": {"name": "Ada", "app_metadata": {"plan": "pro"}},
    "items": "an item called items",
    "keys": "an item called keys",
    "__class__": "an item called __class__",
}
EXPRESSIONS = [
    "d.user.name",
    "d.user.app_metadata.plan",
    "d.user.missing",
    "d.user.missing.deeper",
    "d.items",  # dict's own method wins over the item, as in Jinja
    "d['items']",
    "d.keys",
    "d.__class__",  # unsafe: undefined, never the class
    "d.user.name.upper",
    "d.user.pop",  # a mutating method: unsafe in the immutable sandbox
]


@pytest.mark.parametrize("immutable", [False, True])
@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_flat_sandboxes_read_dicts_as_jinja_does(immutable: bool, expression: str) -> None:
    ours = sandbox(immutable=immutable, flat_globals=True, undefined=ChainableUndefined)
    jinja_class = ImmutableSandboxedEnvironment if immutable else SandboxedEnvironment
    jinja = jinja_class(undefined=ChainableUndefined)

    def shown(env: SandboxedEnvironment) -> str:
        return env.from_string(
            "{{ (" + expression + ") is defined }}|{{ " + expression + " }}"
        ).render(d=DATA)

    assert shown(ours) == shown(jinja)


def test_a_dict_subclass_takes_jinjas_path() -> None:
    class Items(dict[str, Any]):
        shadow = "the attribute"

    env = sandbox(immutable=True, flat_globals=True)
    assert env.from_string("{{ d.shadow }}").render(d=Items(shadow="the item")) == "the attribute"


FILTER_EXPRESSIONS = [
    "[0, 1, '', 'a', none, [], [0]] | select | list",
    "[0, 1, '', 'a', none] | reject | list",
    "[1, 2, 3, 4] | select('odd') | list",
    "[1, 2, 3, 4] | reject('odd') | list",
    "[1, 2, 3, 4] | select('divisibleby', 2) | list",
    "rows | selectattr(1) | list",
    "rows | rejectattr(1) | list",
    "rows | selectattr(0, 'equalto', 'b') | list",
    "rows | rejectattr('1', 'none') | list",
    "users | selectattr('name') | map(attribute='name') | join(', ')",
    "users | rejectattr('name') | list | length",
    "[d.user.missing, 'x'] | select | join(', ')",
    "none | select | list",
    "[] | select | first",
    "rows | map('last') | select | first",
    "[3, 1, 2] | sort | join('-')",
    "'abc' | list | join('.')",
    "[1, 2, 3] | sum",
    "users | groupby('name') | list | length",
    "[1, 2] | select | list | count",
]


@pytest.mark.parametrize("expression", FILTER_EXPRESSIONS)
def test_filters_give_what_jinjas_give(expression: str) -> None:
    ours = sandbox(immutable=True, flat_globals=True, undefined=ChainableUndefined)
    jinja = ImmutableSandboxedEnvironment(undefined=ChainableUndefined)
    values = {
        "d": DATA,
        "rows": [("a", 1), ("b", 0), ("c", None), ("d", "x")],
        "users": [{"name": "Ada"}, {"name": ""}, {"name": "Bo"}],
    }

    def shown(env: SandboxedEnvironment) -> str:
        return env.from_string("{{ " + expression + " }}").render(**values)

    assert shown(ours) == shown(jinja)


def test_select_without_a_test_still_takes_tests_by_keyword() -> None:
    env = sandbox(immutable=True, flat_globals=True)
    template = "{{ [1, none, 3] | select('sameas', other=none) | list }}"
    assert env.from_string(template).render() == "[None]"


async def test_an_async_sandbox_keeps_jinjas_async_filters() -> None:
    async def values() -> AsyncIterator[int]:  # only the async variants iterate this
        for value in (1, 0, 2):
            yield value

    env = sandbox(immutable=True, enable_async=True)
    template = env.from_string("{{ values() | select | join(',') }}")
    assert await template.render_async(values=values) == "1,2"

"""service/sandbox.py: the sandboxes answer as Jinja's own do, the fast dict path included."""

from __future__ import annotations

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

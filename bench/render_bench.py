"""CPU cost of rendering one email (subject, text and HTML) with the shipped templates.

    python -m bench.render_bench [--n 2000] [--repeat 5]

Renders `password_changed` for `bench.run`'s events (every event its own `time`, users in
`en` and `de`) through `Renderer.render` with the context a `send_email` action builds,
and prints the CPU µs per email for each locale: best and median of `--repeat` passes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench.events import make_event
from service.events import validate_envelope
from service.flows import event_view
from service.mail.render import Renderer, template_context

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"SUPPORT_URL": "https://example.com/support"}


def _contexts(locale: str, n: int) -> list[dict[str, Any]]:
    contexts = []
    for seq in range(n):
        envelope = make_event("render", seq, now=1_760_000_000 + seq * 1.5)
        envelope["data"]["user"]["locale"] = locale
        event = validate_envelope(envelope)
        assert event is not None
        contexts.append(template_context(event_view(event, SECRETS), SECRETS))
    return contexts


def _pass(renderer: Renderer, contexts: list[dict[str, Any]]) -> float:
    start = time.process_time()
    for context in contexts:
        renderer.render("password_changed", context["user"]["locale"], context)
    return (time.process_time() - start) / len(contexts) * 1e6


def main() -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="emails per pass")
    parser.add_argument("--repeat", type=int, default=5, help="passes per locale")
    args = parser.parse_args()
    renderer = Renderer(ROOT / "templates", "en")
    print(f"{'locale':6} {'best µs':>8} {'median µs':>10}")
    for locale in ("en", "de"):
        contexts = _contexts(locale, args.n)
        _pass(renderer, contexts[:50])  # compile the templates
        times = [_pass(renderer, contexts) for _ in range(args.repeat)]
        print(f"{locale:6} {min(times):8.1f} {statistics.median(times):10.1f}")


if __name__ == "__main__":
    main()

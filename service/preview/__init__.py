"""`herald preview`: every template and locale rendered against the sample events, live.

`catalog` decides what is shown and renders it, `pages` turns it into escaped HTML,
`server` serves it over aiohttp and reloads when template files change.
"""

from __future__ import annotations

from service.preview.catalog import Catalog, Preview, Sample, fingerprint, load_samples
from service.preview.server import DEFAULT_PORT, EXAMPLES, PreviewServer, serve_preview

__all__ = [
    "DEFAULT_PORT",
    "EXAMPLES",
    "Catalog",
    "Preview",
    "PreviewServer",
    "Sample",
    "fingerprint",
    "load_samples",
    "serve_preview",
]

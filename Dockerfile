# Herald: `herald run` with the shipped config, templates and sample events.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies and the package first, so that editing a template does not reinstall.
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin herald

# Paths in config/herald.yaml (templates/, var/) are relative to this directory.
COPY config ./config
COPY templates ./templates
COPY examples ./examples
RUN mkdir -p var && chown herald:herald var

USER herald
EXPOSE 8080

# Alive (SPEC §8); slim has no curl, so Python asks.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HERALD_HTTP__PORT', '8080'), timeout=3)"]

ENTRYPOINT ["herald"]
CMD ["run"]

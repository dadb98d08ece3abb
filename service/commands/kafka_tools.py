"""`herald publish`, `dlq replay`, `topics create` and `asyncapi`: Herald's Kafka topics."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from service.commands.common import CliError, describe, load, quiet_kafka_client

__all__ = ["asyncapi", "dlq_replay", "publish", "topics_create"]


def publish(args: argparse.Namespace) -> None:
    from service.kafka.publish import publish_files

    config = load(args)
    topic = args.topic or config.kafka.topics[0]
    quiet_kafka_client()
    try:
        count = asyncio.run(publish_files(config.kafka, topic, [Path(f) for f in args.files]))
    except (OSError, ValueError) as exc:
        raise CliError(describe(exc)) from None
    print(f"published {count} event(s) to {topic}")


def dlq_replay(args: argparse.Namespace) -> None:
    from service.kafka.dlq import dlq_topic_for, replay

    config = load(args)
    quiet_kafka_client()
    topic = dlq_topic_for(config.kafka, args.topic)
    try:
        result = asyncio.run(
            replay(
                config.kafka,
                topic,
                limit=args.limit,
                dry_run=args.dry_run,
                emit=lambda line: print(line, flush=True),
                show_addresses=config.log.show_addresses,
            )
        )
    except (ConnectionError, LookupError) as exc:
        raise CliError(describe(exc)) from None
    skipped = f", {result.skipped} skipped (no original topic)" if result.skipped else ""
    if args.dry_run:
        print(f"dry run: would replay {result.replayed} dead letter(s) from {topic}{skipped}")
    else:
        print(f"replayed {result.replayed} dead letter(s) from {topic}{skipped}")


def topics_create(args: argparse.Namespace) -> None:
    """One line per topic; a topic that could not be created makes the exit non-zero.

    The embedded broker of `herald dev` cannot create topics: that exits 1 too, since the
    topics asked for (with their settings) were not made, and a script that runs this
    before `herald run` should stop at a broker that is not the one it meant.
    """
    from service.kafka.topics import Status, TopicsError, create_topics

    config = load(args)
    quiet_kafka_client()
    try:
        outcomes = asyncio.run(
            create_topics(
                config.kafka,
                config.retry,
                partitions=args.partitions,
                replication_factor=args.replication_factor,
                dry_run=args.dry_run,
            )
        )
    except TopicsError as exc:
        raise CliError(str(exc)) from None
    failed: dict[str, list[str]] = {}  # one line per reason: RF 3 on one broker fails all
    for outcome in outcomes:
        if outcome.status is Status.FAILED:
            failed.setdefault(outcome.error, []).append(outcome.spec.name)
        else:
            print(outcome.line())
    lines = [f"cannot create {', '.join(names)}: {error}" for error, names in failed.items()]
    for line in lines[:-1]:
        print(f"herald: {line}", file=sys.stderr)
    if lines:
        raise CliError(lines[-1])


def asyncapi(args: argparse.Namespace) -> None:
    from service.kafka.asyncapi import render_document

    text = render_document(load(args))
    if not args.output:
        sys.stdout.write(text)
        return
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{args.output}: cannot write: {exc.strerror}") from None
    print(f"wrote {args.output}")

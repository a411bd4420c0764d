"""Broker administration: creating the topic table before any worker consumes."""

from __future__ import annotations

import asyncio
from typing import Any

from streams.logging import get_logger
from streams.settings import Settings
from streams.topics import all_topics, physical

log = get_logger(__name__)


def kafka_client_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection options shared by every aiokafka client we create (admin, producer, consumer)."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(settings),
        "security_protocol": settings.broker_security_protocol,
    }
    if settings.broker_security_protocol.startswith("SASL"):
        kwargs.update(
            sasl_mechanism=settings.broker_sasl_mechanism,
            sasl_plain_username=settings.broker_sasl_username,
            sasl_plain_password=settings.broker_sasl_password,
        )
    if "SSL" in settings.broker_security_protocol:
        from aiokafka.helpers import create_ssl_context

        kwargs["ssl_context"] = create_ssl_context(cafile=settings.broker_ssl_cafile)
    return kwargs


def bootstrap_servers(settings: Settings) -> str:
    """faust's ``kafka://host:port;host2:port`` form → Kafka's ``host:port,host2:port``."""
    return ",".join(
        part.split("://", 1)[-1] for part in settings.broker_url.replace(";", ",").split(",")
    )


async def create_topics_async(settings: Settings, topics: list[str] | None = None) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    wanted = [physical(t, settings.topic_prefix) for t in (topics or all_topics())]
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        name=topic,
                        num_partitions=settings.topic_partitions,
                        replication_factor=settings.topic_replication,
                    )
                    for topic in missing
                ]
            )
            log.info("topics created", topics=missing, partitions=settings.topic_partitions)
        return missing
    finally:
        await admin.close()


def create_topics(settings: Settings, topics: list[str] | None = None) -> list[str]:
    """Create every missing topic with the configured partitions; returns those created."""
    return asyncio.run(create_topics_async(settings, topics))

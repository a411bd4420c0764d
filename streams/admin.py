"""Broker administration: creating the topic table before any worker consumes."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from foundation.logging import get_logger
from streams.settings import Settings
from streams.topics import all_topics, physical

log = get_logger(__name__)


def kafka_client_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection options shared by every aiokafka client we create (admin, producer, consumer)."""
    broker = settings.broker
    kwargs: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(settings),
        "security_protocol": broker.security_protocol,
    }
    if broker.security_protocol.startswith("SASL"):
        kwargs.update(
            sasl_mechanism=broker.sasl_mechanism,
            sasl_plain_username=broker.sasl_username,
            sasl_plain_password=broker.sasl_password,
        )
    if "SSL" in broker.security_protocol:
        from aiokafka.helpers import create_ssl_context

        kwargs["ssl_context"] = create_ssl_context(cafile=broker.ssl_cafile)
    return kwargs


def producer_kwargs(settings: Settings) -> dict[str, Any]:
    """Options of every aiokafka producer we create: the connection, every replica's
    acknowledgement, and the one message-size limit (SINGTOME_MAX_MESSAGE_BYTES)."""
    return {
        **kafka_client_kwargs(settings),
        "acks": "all",
        "max_request_size": settings.broker.max_message_bytes,
    }


def bootstrap_servers(settings: Settings) -> str:
    """faust's ``kafka://host:port;host2:port`` form → Kafka's ``host:port,host2:port``."""
    return ",".join(
        part.split("://", 1)[-1] for part in settings.broker.url.replace(";", ",").split(",")
    )


async def create_topics_async(settings: Settings, topics: list[str] | None = None) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    wanted = [physical(t, settings.broker.topic_prefix) for t in (topics or all_topics())]
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
                        num_partitions=settings.broker.topic_partitions,
                        replication_factor=settings.broker.topic_replication,
                        topic_configs=topic_configs(settings),
                    )
                    for topic in missing
                ]
            )
            log.info("topics created", topics=missing, partitions=settings.broker.topic_partitions)
        return missing
    finally:
        await admin.close()


def topic_configs(settings: Settings) -> dict[str, str]:
    """Per-topic broker configuration: the message-size limit the producer also uses."""
    return {"max.message.bytes": str(settings.broker.max_message_bytes)}


def create_topics(settings: Settings, topics: list[str] | None = None) -> list[str]:
    """Create every missing topic with the configured partitions; returns those created."""
    return asyncio.run(create_topics_async(settings, topics))


class TopicProbe:
    """Asks the broker which of some topics it does not know, over one light client that is
    reopened after a failure (the worker's /health uses it)."""

    def __init__(self, settings: Settings, topics: list[str], timeout_s: float = 5.0) -> None:
        self.settings = settings
        self.topics = topics
        self.timeout_s = timeout_s
        self._client: Any = None

    async def missing(self) -> list[str]:
        """The topics the broker does not have; raises when the broker cannot be asked."""
        from aiokafka.client import AIOKafkaClient

        try:
            if self._client is None:
                self._client = AIOKafkaClient(
                    **kafka_client_kwargs(self.settings), request_timeout_ms=4000
                )
                await asyncio.wait_for(self._client.bootstrap(), self.timeout_s)
            metadata = await asyncio.wait_for(self._client.fetch_all_metadata(), self.timeout_s)
        except BaseException:
            await self.close()
            raise
        known = set(metadata.topics())
        return [topic for topic in self.topics if topic not in known]

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

"""The local Apache Kafka: one version, declared in scripts/kafka/pom.xml, and what happens when
its jars are not installed."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from frontends import kafka_broker
from frontends.stack import StackConfig, StackError, broker_info, start_broker

ROOT = Path(__file__).resolve().parents[2]
NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def test_one_kafka_version_for_the_stack_the_compose_file_and_the_java_client() -> None:
    version = kafka_broker.kafka_version()
    assert version.split(".")[0] == "4"
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{version}"
    java = ET.parse(ROOT / "clients" / "java" / "pom.xml").getroot()
    assert java.findtext("m:properties/m:kafka.version", namespaces=NS) == version


def test_a_missing_installation_is_a_clear_error(tmp_path: Path) -> None:
    cfg = StackConfig(root=tmp_path / "stack", kafka_port=1, kafka_dir=tmp_path / "kafka")
    assert not kafka_broker.installation(cfg.kafka_dir).installed
    with pytest.raises(StackError, match=r"setup\.sh"):
        start_broker(cfg)
    assert broker_info(cfg)["kind"] == "kafka"
    assert cfg.controller_port == 2


def test_the_configuration_names_both_listeners_and_the_log_dir(tmp_path: Path) -> None:
    props = kafka_broker._write_config(tmp_path, 29392, 29393).read_text()
    assert "listeners=PLAINTEXT://127.0.0.1:29392,CONTROLLER://127.0.0.1:29393" in props
    assert "controller.quorum.voters=1@127.0.0.1:29393" in props
    assert f"log.dirs={tmp_path / 'data'}" in props
    assert "auto.create.topics.enable=false" in props
    assert "group.initial.rebalance.delay.ms=0" in props

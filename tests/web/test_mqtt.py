"""MQTT events against a real mosquitto started here: topics, retained state, Home Assistant
discovery, a broker that is down (events dropped and counted, nothing waits) and one that comes back
(reconnect, state republished). Through the sink, as in a run."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until
from webtools import Broker

from stream.pipeline import config, wire
from stream.pipeline.mqtt import MqttPublisher
from stream.pipeline.stages.sinks import Sink

pytestmark = pytest.mark.e2e  # starts mosquitto


class Listener:
    """A subscriber that keeps every message, retained ones included."""

    def __init__(self, port: int, topic: str = "#"):
        self.got: queue.Queue[tuple[str, Any, bool]] = queue.Queue()
        self.seen: list[tuple[str, Any, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe(topic)
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        payload = m.payload.decode()
        try:
            value = json.loads(payload)
        except ValueError:
            value = payload
        with self.lock:
            self.seen.append((m.topic, value, bool(m.retain)))

    def on(self, topic: str) -> list[Any]:
        with self.lock:
            return [v for t, v, _ in self.seen if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def sink_with_mqtt(port: int) -> Sink:
    cfg = config.load(
        None,
        {
            "sources": [{"url": "x.mp4", "name": "door"}],
            "outputs": {"mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": "fs"}},
        },
    )
    return Sink(cfg)


def event(kind: str, track: int, name: str | None) -> wire.Event:
    return wire.event_message(
        "door",
        {
            "type": kind,
            "camera": "door",
            "track": track,
            "name": name,
            "first_seen": 1.0,
            "last_seen": 2.0,
            "best_distance": 0.3,
        },
    )


def test_events_state_and_discovery(broker) -> None:
    sink = sink_with_mqtt(broker.port)
    listener = Listener(broker.port)
    try:
        assert sink.mqtt is not None
        wait_until(lambda: sink.mqtt.connected, 20, "the sink to connect to mosquitto")
        disc = wait_until(lambda: listener.on("homeassistant/sensor/facestream_door/config"), 10, "discovery")
        assert (
            disc[-1]["state_topic"] == "fs/state/door"
            and disc[-1]["value_template"] == "{{ value_json.count }}"
        )
        assert wait_until(lambda: listener.on("fs/status"), 10, "online status")[-1] == "online"

        sink.handle(event("track_confirmed", 1, "obama"))
        sink.handle(event("unknown_persists", 2, None))
        sink.handle(event("track_left", 1, "obama"))
        evs = wait_until(
            lambda: (e := listener.on("fs/events/door")) and len(e) == 3 and e, 10, "three events"
        )
        assert [(e["type"], e["name"]) for e in evs] == [
            ("track_confirmed", "obama"),
            ("unknown_persists", None),
            ("track_left", "obama"),
        ]
        states = wait_until(
            lambda: (s := listener.on("fs/state/door")) and s[-1]["count"] == 1 and s, 10, "state"
        )
        assert any(s["people"] == ["obama"] and s["count"] == 2 for s in states)  # both present at one point
        assert states[-1]["people"] == [] and states[-1]["unknown"] == 1

        # A newcomer (Home Assistant after a restart) gets the state and discovery at once: retained.
        late = Listener(broker.port)
        try:
            got = wait_until(
                lambda: [(t, r) for t, _, r in late.seen if t == "fs/state/door"], 10, "retained state"
            )
            assert got == [("fs/state/door", True)]
            assert wait_until(
                lambda: late.on("homeassistant/sensor/facestream_door/config"), 10, "retained discovery"
            )
        finally:
            late.close()
        assert sink.mqtt.dropped == 0
    finally:
        listener.close()
        sink.close()


def test_a_down_broker_drops_and_counts_then_reconnects(broker) -> None:
    from prometheus_client import REGISTRY

    def dropped() -> float:
        return REGISTRY.get_sample_value("facestream_mqtt_messages_total", {"result": "dropped"}) or 0.0

    broker.stop()
    sink = sink_with_mqtt(broker.port)
    try:
        before = dropped()
        for i in range(50):  # returns at once each time: paho's thread owns the network
            sink.handle(event("track_confirmed", i, "obama"))
        assert sink.mqtt is not None and not sink.mqtt.connected
        assert sink.mqtt.dropped >= 50 and dropped() - before >= 50

        broker.start()  # same port: paho's backoff finds it again
        wait_until(lambda: sink.mqtt.connected, 60, "the reconnect")
        listener = Listener(broker.port)
        try:
            state = wait_until(lambda: listener.on("fs/state/door"), 10, "the state republished on reconnect")
            assert state[-1]["count"] == 50  # what it missed was counted, not forgotten
        finally:
            listener.close()
    finally:
        sink.close()


def test_publisher_refuses_nothing_silently_without_broker() -> None:
    cfg = config.load(None, {"outputs": {"mqtt": {"host": "127.0.0.1", "port": 1, "topic_prefix": "fs"}}})
    pub = MqttPublisher.maybe(cfg)
    assert pub is not None
    try:
        pub.event("door", {"type": "camera_down", "camera": "door"})
        assert pub.dropped == 2 and pub.sent == 0  # the event and the state: both counted
    finally:
        pub.close()


def test_config_is_strict() -> None:
    from stream.errors import FacestreamError

    with pytest.raises(FacestreamError, match="outputs.mqtt.bogus"):
        config.load(None, {"outputs": {"mqtt": {"host": "h", "bogus": 1}}})
    with pytest.raises(FacestreamError, match="topic_prefix"):
        config.load(None, {"outputs": {"mqtt": {"host": "h", "topic_prefix": "a/#"}}})

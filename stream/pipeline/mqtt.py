"""MQTT events for door kiosks and Home Assistant, published by the sink (where every event already
arrives), never by the match stage: paho-mqtt's own thread does the network, so a broker that is slow
or down costs the sink a dictionary update and a counted drop, never a wait.

Topics (PREFIX = outputs.mqtt.topic_prefix):
  PREFIX/events/<camera>   every event as JSON (track_confirmed, track_left, unknown_persists, camera up/down)
  PREFIX/state/<camera>    retained: who that camera sees now {"count", "people", "unknown", "camera_up", "time"}
  PREFIX/status            retained: online / offline (the broker says offline if we vanish: last will)
  <discovery>/sensor/facestream_<camera>/config   retained Home Assistant discovery: one sensor per camera
                           (state = how many people it sees; attributes = the state JSON)

Reconnects with backoff (1 s doubling to 30 s: paho's loop). Whatever cannot be handed to paho
(disconnected, or its bounded queue full) is counted in facestream_mqtt_messages{result="dropped"}."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
    from prometheus_client import Counter

    from stream.pipeline.config import MqttConfig, PipelineConfig

log = logging.getLogger(__name__)
QUEUE = 1000  # messages paho may hold while the socket drains
_counter: Counter | None = None


def _messages() -> Counter:
    global _counter
    if _counter is None:
        from prometheus_client import Counter

        _counter = Counter(
            "facestream_mqtt_messages", "MQTT messages, by result (sent or dropped)", ["result"]
        )
    return _counter


def topic_part(camera: str) -> str:
    """A camera name as one MQTT topic level and HA object id (no wildcards or separators)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", camera) or "_"


class CameraState:
    """Who a camera sees now, from its track events."""

    def __init__(self) -> None:
        self.tracks: dict[int, str | None] = {}  # track -> name (None: an unknown face)
        self.up = True

    def update(self, event: dict[str, Any]) -> bool:
        """True when the state changed."""
        kind, track = event.get("type"), event.get("track")
        before = (dict(self.tracks), self.up)
        if kind in ("track_confirmed", "unknown_persists", "unknown_returned") and isinstance(track, int):
            self.tracks[track] = event.get("name")
        elif kind == "track_left" and isinstance(track, int):
            self.tracks.pop(track, None)
        elif kind in ("camera_up", "camera_down"):
            self.up = kind == "camera_up"
            if not self.up:
                self.tracks.clear()
        return (self.tracks, self.up) != before

    def to_dict(self) -> dict[str, Any]:
        names = sorted({n for n in self.tracks.values() if n})
        unknown = sum(1 for n in self.tracks.values() if n is None)
        return {
            "count": len(self.tracks),
            "people": names,
            "unknown": unknown,
            "camera_up": self.up,
            "time": time.time(),
        }


class MqttPublisher:
    def __init__(self, mc: MqttConfig, cameras: list[str]):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.mc = mc
        self.prefix = mc.topic_prefix.rstrip("/")
        self.cameras = list(cameras)
        self.state = {c: CameraState() for c in cameras}
        self.connected = False
        self.sent = self.dropped = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"facestream-{os.getpid()}", clean_session=True
        )
        if mc.username is not None:
            self.client.username_pw_set(mc.username, mc.password)
        if mc.tls:
            self.client.tls_set()
        self.client.max_queued_messages_set(QUEUE)
        self.client.reconnect_delay_set(1, 30)
        self.client.will_set(f"{self.prefix}/status", "offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.connect_async(mc.host, mc.port, keepalive=30)
        self.client.loop_start()

    @classmethod
    def maybe(cls, cfg: PipelineConfig) -> MqttPublisher | None:
        return cls(cfg.outputs.mqtt, cfg.cameras) if cfg.outputs.mqtt is not None else None

    # ----- paho's thread -----------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("mqtt %s:%d refused the connection: %s", self.mc.host, self.mc.port, reason)
            return
        log.info("mqtt connected to %s:%d", self.mc.host, self.mc.port)
        self.connected = True
        self._publish(f"{self.prefix}/status", "online", retain=True)
        for cam in self.cameras:
            self._publish(*self._discovery(cam), retain=True)
            self._publish_state(cam)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.connected:
            log.warning("mqtt %s:%d disconnected (%s): reconnecting", self.mc.host, self.mc.port, reason)
        self.connected = False

    # ----- the sink's thread ---------------------------------------------------------------------------
    def event(self, cam: str, event: dict[str, Any]) -> None:
        self._publish(f"{self.prefix}/events/{topic_part(cam)}", json.dumps(event, separators=(",", ":")))
        if self.state.setdefault(cam, CameraState()).update(event):
            self._publish_state(cam)

    def _publish_state(self, cam: str) -> None:
        state = json.dumps(self.state[cam].to_dict(), separators=(",", ":"))
        self._publish(f"{self.prefix}/state/{topic_part(cam)}", state, retain=True)

    def _discovery(self, cam: str) -> tuple[str, str]:
        part = topic_part(cam)
        config = {
            "name": f"facestream {cam}",
            "unique_id": f"facestream_{part}",
            "object_id": f"facestream_{part}",
            "state_topic": f"{self.prefix}/state/{part}",
            "value_template": "{{ value_json.count }}",
            "json_attributes_topic": f"{self.prefix}/state/{part}",
            "unit_of_measurement": "people",
            "icon": "mdi:face-recognition",
            "availability_topic": f"{self.prefix}/status",
            "device": {"identifiers": ["facestream"], "name": "facestream", "manufacturer": "facestream"},
        }
        return f"{self.mc.discovery_prefix}/sensor/facestream_{part}/config", json.dumps(config)

    def _publish(self, topic: str, payload: str, retain: bool = False) -> None:
        import paho.mqtt.client as mqtt

        ok = (
            self.connected
            and self.client.publish(topic, payload, qos=0, retain=retain).rc == mqtt.MQTT_ERR_SUCCESS
        )
        if ok:
            self.sent += 1
        else:
            self.dropped += 1
        _messages().labels("sent" if ok else "dropped").inc()

    def close(self) -> None:
        if self.connected:
            self._publish(f"{self.prefix}/status", "offline", retain=True)
        self.client.disconnect()
        self.client.loop_stop()

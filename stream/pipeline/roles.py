"""The pipeline's roles, in one place: each stage's name, where its code lives, its port, what it
takes, whom it reads from, and whether it binds and reads frame pixels.

    capture -> detect -> embed -> match -> sink        (match also publishes results to dashboards)

With `transport.topology: replicas` (Kubernetes: detect and embed as Deployments with any number of
interchangeable replicas) the scalable roles bind nothing: detect replicas connect to every capture
and push into the relay, embed replicas pull from the relay and push into match.

    capture[i] -> detect xN -> relay -> embed xM -> match -> sink

Every other module (config's endpoints, the frame ring's flow control, batching's checks, CURVE keys,
the stage loader and the CLI) reads these tables instead of spelling role names."""

from __future__ import annotations

from enum import StrEnum

from stream.pipeline.wire import Kind


class Role(StrEnum):
    """A stage process's role (a str: metrics labels, file names and the CLI use the value)."""

    CAPTURE = "capture"
    DETECT = "detect"
    EMBED = "embed"
    MATCH = "match"
    SINK = "sink"
    RELAY = "relay"  # topology replicas: where detect replicas meet embed replicas (stateless)
    DASHBOARD = "dashboard"  # the web app (stream/web/), with `run --dashboard`: reads results only


# Endpoints that are not a stage's main output.
RESULTS = "results"  # match's PUB for dashboards (results only, no pixels)
CONTROL = "control"  # supervisor -> sink notices (ipc in the run directory)
PREVIEW = "preview"  # sink -> dashboard: downscaled JPEGs while someone watches (ipc in the run directory)

# The module in stream/pipeline/stages/ that holds each role's Stage.
MODULES: dict[Role, str] = {
    Role.CAPTURE: "capture",
    Role.DETECT: "detect",
    Role.EMBED: "embed",
    Role.MATCH: "match",
    Role.SINK: "sinks",
    Role.RELAY: "relay",
    Role.DASHBOARD: "dashboard",
}

# tcp: each output endpoint's port is transport.base_port + offset + worker index.
PORT_OFFSETS: dict[str, int] = {
    Role.CAPTURE: 0,
    Role.DETECT: 100,
    Role.RELAY: 150,  # the relay's output (embed replicas connect); its input is detect's port
    Role.EMBED: 200,
    Role.MATCH: 300,
    RESULTS: 301,
}

# Whose outputs each consuming role connects to.
UPSTREAM: dict[str, Role] = {
    Role.DETECT: Role.CAPTURE,
    Role.EMBED: Role.DETECT,
    Role.MATCH: Role.EMBED,
    Role.SINK: Role.MATCH,
    Role.RELAY: Role.DETECT,
}

# What each consuming role takes; anything else is a bad message for it.
ACCEPTS: dict[str, frozenset[Kind]] = {
    Role.DETECT: frozenset({Kind.FRAME, Kind.EOS, Kind.EVENT}),
    Role.EMBED: frozenset({Kind.DETS, Kind.EOS, Kind.EVENT}),
    Role.MATCH: frozenset({Kind.FACES, Kind.EOS, Kind.EVENT}),
    Role.SINK: frozenset({Kind.RESULT, Kind.EOS, Kind.EVENT, Kind.GONE}),
}

# Roles that bind their output (CURVE servers on tcp); the sink only connects.
BINDERS = frozenset({Role.CAPTURE, Role.DETECT, Role.EMBED, Role.MATCH, Role.RELAY})

# topology replicas: the roles that scale, and the fixed role that binds the point where each one's
# output meets its consumers (that role's input). Their replicas connect both ways and bind nothing.
MEETS_AT: dict[Role, Role] = {Role.DETECT: Role.RELAY, Role.EMBED: Role.MATCH}

# The roles that read frame pixels, in pipeline order: the order of their progress words in a frame
# ring's header (framering.py), so never reorder it.
PIXEL_READERS: tuple[Role, ...] = (Role.DETECT, Role.EMBED, Role.SINK)

"""The stage processes. `run_stage` is what `facestream stage NAME` (and the supervisor) runs."""

from __future__ import annotations

import importlib
import logging

import zmq

from stream.errors import FacestreamError
from stream.pipeline.config import PipelineConfig
from stream.pipeline.roles import MODULES, Role
from stream.pipeline.stages.base import (
    EXIT_FATAL,
    EXIT_STOPPED,
    Stage,
    Stop,
    exit_now,
    remove_orphaned_dirs,
    report_fatal,
)

log = logging.getLogger(__name__)


def stage_class(role: Role) -> type[Stage]:
    """The Stage subclass of `role`, from its module (roles.MODULES)."""
    module = importlib.import_module(f"stream.pipeline.stages.{MODULES[role]}")
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, Stage) and getattr(obj, "role", None) == role:
            return obj
    raise FacestreamError(f"stream.pipeline.stages.{MODULES[role]} has no {role} stage")


def run_stage(role: str, cfg: PipelineConfig, index: int = 0) -> int:
    if role not in set(Role):
        raise FacestreamError(f"unknown stage {role!r} (one of: {', '.join(Role)})")
    role = Role(role)
    if role == Role.CAPTURE and not 0 <= index < len(cfg.sources):
        raise FacestreamError(f"capture --index {index}: the config has {len(cfg.sources)} sources")
    stop = Stop().install()
    stop.cleanup = lambda: remove_orphaned_dirs(cfg, stop)
    try:
        rc = stage_class(role)(cfg, index, stop).run()
    except Exception as e:
        if not stop.hard:
            if isinstance(e, FacestreamError):
                report_fatal(cfg, role, index, f"{role}-{index}: {e}")
                return EXIT_FATAL
            if isinstance(e, zmq.ZMQError) and e.errno == zmq.EADDRINUSE:
                report_fatal(cfg, role, index, f"{role}-{index}: endpoint already in use ({e})")
                return EXIT_FATAL
            raise
        # Stopped hard (the supervisor died, whose run directory another stage may already have
        # removed): an error while winding down is expected, and nobody is left to report it to.
        log.debug("%s-%d: while stopping: %s", role, index, e)
        rc = EXIT_STOPPED
    finally:
        remove_orphaned_dirs(cfg, stop)
    if stop.hard:
        # Everything is closed: skip the interpreter's finalization, which tears down torch and ONNX
        # Runtime slowly (seconds on a loaded machine) while the hard-stop watchdog cannot run.
        exit_now(rc)
    return rc

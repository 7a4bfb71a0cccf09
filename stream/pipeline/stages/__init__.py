"""The stage processes. `run_stage` is what `facestream stage NAME` (and the supervisor) runs."""

from __future__ import annotations

import importlib
import logging

import zmq

from stream.errors import FacestreamError
from stream.pipeline.config import PipelineConfig
from stream.pipeline.stages.base import EXIT_FATAL, Stop, report_fatal

log = logging.getLogger(__name__)
MODULES = {"capture": "capture", "detect": "detect", "embed": "embed", "match": "match", "sink": "sinks"}


def run_stage(role: str, cfg: PipelineConfig, index: int = 0) -> int:
    if role not in MODULES:
        raise FacestreamError(f"unknown stage {role!r} (one of: {', '.join(MODULES)})")
    if role == "capture" and not 0 <= index < len(cfg.sources):
        raise FacestreamError(f"capture --index {index}: the config has {len(cfg.sources)} sources")
    stop = Stop().install()
    module = importlib.import_module(f"stream.pipeline.stages.{MODULES[role]}")
    try:
        return int(module.run(cfg, index, stop) or 0)
    except FacestreamError as e:
        report_fatal(cfg, role, index, f"{role}-{index}: {e}")
        return EXIT_FATAL
    except zmq.ZMQError as e:
        if e.errno == zmq.EADDRINUSE:
            report_fatal(cfg, role, index, f"{role}-{index}: endpoint already in use ({e})")
            return EXIT_FATAL
        raise

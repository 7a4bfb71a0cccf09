"""`facestream` command line: one argparse tree; each area registers its own subcommands.

Every command is a function taking the parsed arguments and returning an exit code. A
FacestreamError (bad input, missing model, unusable file) becomes one line on stderr and exit 2, and
so does a folder or file the machine will not let us write (read-only, no permission, disk full): that
is the user's setup, not a bug. Ctrl-C exits 130 without a traceback."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
from collections.abc import Sequence

from stream.errors import FacestreamError


def build_parser() -> argparse.ArgumentParser:
    # Imported here so that `facestream --help` stays fast: command modules import heavy libraries
    # (torch, onnxruntime) only inside their command functions.
    from stream import doctor, model_commands
    from stream.gallery import commands as gallery_commands
    from stream.gallery import unknown_commands
    from stream.pipeline import commands as pipeline_commands
    from stream.web import commands as web_commands

    parser = argparse.ArgumentParser(
        prog="facestream", description="Real-time face recognition for video streams."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (debug level)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    model_commands.register(sub)
    doctor.register(sub)
    gallery_commands.register(sub)
    unknown_commands.register(sub)
    pipeline_commands.register(sub)
    web_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Long-running commands narrate at INFO; one-shot commands print only their answer (and warnings).
    chatty = args.command in {"run", "stage", "models", "demo", "serve"}
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if chatty else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # SIGTERM behaves like Ctrl-C (cleanup runs: no half-built model, no half-written gallery);
    # `run` and `stage` install their own handlers for an orderly drain.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.func(args) or 0)
    except FacestreamError as e:
        print(f"facestream: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _SETUP_ERRNOS or e.filename is None:
            raise
        print(
            f"facestream: error: cannot write {e.filename}: {e.strerror}{_home_hint(e.filename)}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("facestream: interrupted", file=sys.stderr)
        return 130


_SETUP_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _home_hint(filename: object) -> str:
    from pathlib import Path

    from stream.home import facestream_home

    home = facestream_home()
    if Path(str(filename)).is_relative_to(home):
        return f" (models and downloads live in {home}: set FACESTREAM_HOME to a writable folder)"
    return ""


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())

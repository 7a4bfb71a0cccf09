"""The small rules of the operator's surface, without models or processes: listen addresses, tokens,
upload sniffing and naming, the config sections, who sees the token check."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stream.errors import FacestreamError
from stream.pipeline import config
from stream.pipeline.roles import PREVIEW
from stream.web.auth import TOKEN_FILE, Auth, parse_listen, resolve_token
from stream.web.uploads import image_type


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9") == ("::1", 9)
    for bad in ("8080", "host:", "host:http", ":80", "h:70000"):
        with pytest.raises(FacestreamError, match="HOST:PORT"):
            parse_listen(bad)


def test_reads_need_the_token_only_beyond_loopback() -> None:
    assert not Auth.for_host("127.0.0.1", "t" * 16).reads_need_token
    assert not Auth.for_host("::1", "t" * 16).reads_need_token
    assert not Auth.for_host("localhost", "t" * 16).reads_need_token
    assert Auth.for_host("0.0.0.0", "t" * 16).reads_need_token
    assert Auth.for_host("192.168.1.5", "t" * 16).reads_need_token
    assert Auth.for_host("example.org", "t" * 16).reads_need_token


def test_generated_token_is_kept_private_for_a_restart(tmp_path: Path) -> None:
    token, generated = resolve_token(None, tmp_path)
    assert generated and len(token) >= 32
    assert stat.S_IMODE(os.stat(tmp_path / TOKEN_FILE).st_mode) == 0o600
    assert resolve_token(None, tmp_path) == (token, False)  # the restarted dashboard: same, not printed
    assert resolve_token("configured-token-123", tmp_path) == ("configured-token-123", False)
    assert resolve_token(None)[0] != resolve_token(None)[0]


def test_upload_types_are_sniffed_from_the_bytes() -> None:
    assert image_type(b"\xff\xd8\xff\xe0rest") == "JPEG"
    assert image_type(b"\x89PNG\r\n\x1a\nrest") == "PNG"
    assert image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WebP"
    assert image_type(b"GIF89a") is None
    assert image_type(b"<svg xmlns=") is None
    assert image_type(b"%PDF-1.7") is None


def test_config_sections() -> None:
    cfg = config.load(None, {"dashboard.listen": "0.0.0.0:8080"})
    assert cfg.dashboard is not None and cfg.dashboard.preview_fps == 4.0
    assert config.load(None, {}).dashboard is None  # no dashboard unless asked for
    with pytest.raises(FacestreamError, match="dashboard.listen"):
        config.load(None, {"dashboard.listen": "8080"})
    with pytest.raises(FacestreamError, match="dashboard.bogus"):
        config.load(None, {"dashboard": {"bogus": 1}})
    cfg = config.load(
        None, {"transport": {"kind": "tcp", "run_dir": "/tmp/x"}, "dashboard.listen": "127.0.0.1:1"}
    )
    assert cfg.endpoint(PREVIEW) == "ipc:///tmp/x/preview-0"  # beside the supervisor, even with tcp

"""The REST API with the real models on the shared photos, through FastAPI's TestClient (the app
in-process, no server): the answers equal the CLI's, every refusal is a 4xx with one line, and
nothing is written by a refused request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stream import cli
from stream.web.app import Settings, create_app

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> dict[str, Path]:
    knn = shared_data / "faces" / "face_recognition" / "knn_examples"
    return {
        "obama": knn / "train" / "obama" / "obama.jpg",
        "obama2": knn / "train" / "obama" / "obama2.jpg",
        "obama_test": knn / "test" / "obama1.jpg",
        "biden": knn / "train" / "biden" / "biden.jpg",
        "group": knn / "test" / "obama_and_biden.jpg",
    }


def client(tmp_path: Path, analyzer, host: str = "127.0.0.1", **kw) -> TestClient:
    settings = Settings(host=host, token=TOKEN, gallery=tmp_path / "g.db", model="dlib-resnet-v1", **kw)
    return TestClient(create_app(settings, analyzer))


@pytest.fixture
def api(tmp_path: Path, analyzer) -> Iterator[TestClient]:
    with client(tmp_path, analyzer) as c:
        yield c


def upload(path: Path, field: str = "image") -> dict[str, tuple[str, bytes, str]]:
    return {field: (path.name, path.read_bytes(), "image/jpeg")}


def enroll(api: TestClient, name: str, *paths: Path, headers: dict[str, str] | None = AUTH):
    files = [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    return api.post("/api/people", data={"name": name}, files=files, headers=headers)


def test_probes(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}
    schema = api.get("/openapi.json").json()
    assert {"/api/identify", "/api/verify", "/api/people", "/api/events"} <= set(schema["paths"])


def test_enroll_identify_verify_like_the_cli(api: TestClient, tmp_path: Path, photos, capsys) -> None:
    r = enroll(api, "obama", photos["obama"])
    assert r.status_code == 201, r.text
    assert r.json()["photos"] == [{"photo": "obama.jpg", "status": "enrolled", "detail": ""}]
    assert enroll(api, "biden", photos["biden"]).status_code == 201
    people = api.get("/api/people").json()["people"]
    assert [(p["name"], p["samples"]) for p in people] == [("biden", 1), ("obama", 1)]
    thumb = api.get("/api/people/obama/thumbnail")
    assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"

    r = api.post("/api/identify", files=upload(photos["group"]))
    assert r.status_code == 200, r.text
    got = r.json()
    assert {"obama", "biden"} <= {f["name"] for f in got["faces"]}
    # The same JSON as the CLI's `identify --json` on the same file and gallery.
    assert cli.main(["identify", "--json", "--gallery", str(tmp_path / "g.db"), str(photos["group"])]) == 0
    assert json.loads(capsys.readouterr().out) == got

    same = api.post(
        "/api/verify", files={**upload(photos["obama2"], "image1"), **upload(photos["obama_test"], "image2")}
    )
    diff = api.post(
        "/api/verify", files={**upload(photos["obama2"], "image1"), **upload(photos["biden"], "image2")}
    )
    assert same.status_code == diff.status_code == 200
    assert same.json()["same"] is True and diff.json()["same"] is False
    assert same.json()["distance"] < same.json()["threshold"] < diff.json()["distance"]


def test_rename_and_remove(api: TestClient, photos) -> None:
    assert enroll(api, "obama", photos["obama"]).status_code == 201
    assert api.patch("/api/people/obama", json={"name": "barack"}).status_code == 401
    r = api.patch("/api/people/obama", json={"name": "barack"}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert [p["name"] for p in api.get("/api/people").json()["people"]] == ["barack"]
    r = api.post("/api/identify", files=upload(photos["obama_test"]))
    assert [f["name"] for f in r.json()["faces"]] == ["barack"]  # the matcher saw the rename
    assert api.delete("/api/people/nobody", headers=AUTH).status_code == 404
    assert api.delete("/api/people/barack").status_code == 401
    assert api.delete("/api/people/barack", headers=AUTH).json() == {"removed": "barack", "samples": 1}
    assert api.get("/api/people").json()["people"] == []


def test_writes_need_the_token_even_on_loopback(api: TestClient, tmp_path: Path, photos) -> None:
    r = enroll(api, "obama", photos["obama"], headers=None)
    assert r.status_code == 401 and "token" in r.json()["detail"]
    r = enroll(api, "obama", photos["obama"], headers={"Authorization": "Bearer wrong-token-wrong-token"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong token"
    assert not (tmp_path / "g.db").exists()  # nothing written, not even an empty gallery
    # The page's login: a cookie that then allows writes.
    assert api.post("/api/login", json={"token": "nope"}).status_code == 401
    assert api.post("/api/login", json={"token": TOKEN}).status_code == 200
    assert enroll(api, "obama", photos["obama"], headers=None).status_code == 201


def test_beyond_loopback_reads_need_the_token_too(tmp_path: Path, analyzer) -> None:
    with client(tmp_path, analyzer, host="0.0.0.0") as api:
        assert api.get("/healthz").status_code == 200  # probes stay open (load balancers)
        assert api.get("/api/people").status_code == 401
        assert api.get("/api/events").status_code == 401
        assert api.get("/api/people", headers=AUTH).status_code == 200


def test_bad_uploads_are_refused_with_one_line(tmp_path: Path, analyzer, photos) -> None:
    with client(tmp_path, analyzer, max_upload_bytes=2_000_000) as api:
        data = photos["obama"].read_bytes()
        cases = {
            "text": (b"hello, not an image", 415, "not a JPEG, PNG, WebP, BMP or TIFF image"),
            "empty": (b"", 400, "empty file"),
            "truncated": (data[: len(data) // 2], 400, "truncated JPEG"),
            "garbage": (b"\xff\xd8\xff" + b"\x00" * 1000 + b"\xff\xd9", 400, "cannot decode"),
            "big": (b"\xff\xd8\xff" + b"\x00" * 2_100_000, 413, "larger than"),
        }
        for name, (body, status, words) in cases.items():
            r = api.post("/api/identify", files={"image": (f"../../{name}.jpg", body, "image/jpeg")})
            assert r.status_code == status, (name, r.text)
            detail = r.json()["detail"]
            assert words in detail and "\n" not in detail and "/" not in detail.split(":")[0], (name, detail)
            r = api.post(
                "/api/people", data={"name": "x"}, files=[("photos", (f"{name}.jpg", body))], headers=AUTH
            )
            assert r.status_code == status, (name, r.text)
        # A bad name: the gallery's own one-line reason, before any photo is looked at.
        r = enroll(api, "bad\nname", photos["obama"])
        assert r.status_code == 400 and "\n" not in r.json()["detail"], r.text
        # One unfit photo among good ones: refused whole, nothing stored.
        blank = tmp_path / "blank.png"
        import cv2
        import numpy as np

        cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
        r = enroll(api, "obama", photos["obama"], blank)
        assert r.status_code == 400 and "blank.png" in r.json()["detail"], r.text
        assert not (tmp_path / "g.db").exists()
        # Declared bodies beyond the limit are refused before they are read.
        r = api.post("/api/identify", content=b"x" * 10, headers={"Content-Length": str(10**9)})
        assert r.status_code == 413


def test_not_ready_with_an_unreadable_gallery(tmp_path: Path, analyzer) -> None:
    (tmp_path / "g.db").write_bytes(b"this is not a gallery" * 100)
    with client(tmp_path, analyzer) as api:
        assert api.get("/healthz").status_code == 200  # alive, but
        r = api.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "not ready" and "g.db" in r.json()["reason"]

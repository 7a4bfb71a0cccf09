"""Strangers who come back: how well the match stage's live clustering of unknown faces groups people
it was never told about. Prints markdown tables.

    python benchmarks/bench_strangers.py [--shot N]

Two people are enrolled (kate_siegel, shea_whigham, one photo each); every other person of the shared
photos is held out. Every photo of a held-out person (and each enrolled person's photo) is a visit:
the face pasted on a wall, moving for `--shot` frames (stream/pipeline/identity_eval.py), then gone
long enough for its track to end. Each photo visits twice, at another place and size, all first
visits before all second ones. The match stage's Namer (tracks, quality gate, unknown clustering into
the gallery file) names every frame.

Scores, over the visits of held-out people that were stored (a track with 3 good faces):
- purity: the share of visits whose identity's most common person is theirs;
- completeness: the share of visits in their person's most common identity (1.0: nobody split);
- return: for visits of a person some stored identity already holds, frames from the first face to
  the first face output with that identity (and how many got it);
- cost: the Namer's time per frame with unknown clustering on and off (median), and per stored visit;
- offline: `unknowns cluster` (threshold) and K-means with k = the number of held-out people, on
  the stored faces."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from stream.gallery.clustering import kmeans, threshold_clusters
from stream.gallery.unknowns import Unknowns
from stream.pipeline import identity_eval as ie
from stream.pipeline import wire
from stream.pipeline.config import MatchConfig, PipelineConfig, UnknownsConfig
from stream.pipeline.stages.match import Namer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
KNN = "faces/face_recognition/knn_examples"
FNP = "faces/facenet-pytorch/test_images"
PHOTOS = {  # person -> photos (one face each, or the largest)
    "obama": [f"{KNN}/train/obama/obama.jpg", f"{KNN}/train/obama/obama2.jpg", f"{KNN}/test/obama1.jpg"],
    "biden": [f"{KNN}/train/biden/biden.jpg", f"{KNN}/train/biden/biden2.jpg"],
    "kit_harington": [
        f"{KNN}/train/kit_harington/john1.jpeg",
        f"{KNN}/train/kit_harington/john2.jpeg",
        f"{KNN}/test/johnsnow_test1.jpg",
    ],
    "rose_leslie": [f"{KNN}/train/rose_leslie/img1.jpg", f"{KNN}/train/rose_leslie/img2.jpg"],
    "alex_lacamoire": [f"{KNN}/train/alex_lacamoire/img1.jpg", f"{KNN}/test/alex_lacamoire1.jpg"],
    "angelina_jolie": [f"{FNP}/angelina_jolie/1.jpg"],
    "paul_rudd": [f"{FNP}/paul_rudd/1.jpg"],
    "kate_siegel": [f"{FNP}/kate_siegel/1.jpg"],
    "shea_whigham": [f"{FNP}/shea_whigham/1.jpg"],
}
ENROLLED = {"kate_siegel", "shea_whigham"}
FPS = 25.0
POSES = [((200, 180, 110), (240, 180, 115)), ((450, 170, 90), (420, 175, 95))]


def actors() -> list[ie.Actor]:
    ref = json.loads((DATA / "reference/mtcnn/detections.json").read_text())["images"]
    out = []
    for person, rels in PHOTOS.items():
        for rel in rels:
            boxes = [f["box"] for f in ref[rel]]
            x1, y1, x2, y2 = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            out.append(ie.Actor(person, DATA / rel, (x1, y1, x2, y2)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shot", type=int, default=10, help="frames per visit")
    args = ap.parse_args(argv)
    from stream import doctor
    from stream.faces import FaceAnalyzer

    print(doctor.header())
    analyzer = FaceAnalyzer()
    cast = actors()
    photos = ie.load_photos({str(i): a for i, a in enumerate(cast)})
    order = np.random.default_rng(0)
    visits = [(cast[i], POSES[0]) for i in order.permutation(len(cast))]
    visits += [(cast[i], POSES[1]) for i in order.permutation(len(cast))]
    # Each visit: its frames, then one empty frame 4 s later (over max_age_s: the track ends).
    frames, owner = [], []
    for k, (actor, (start, end)) in enumerate(visits):
        case = ie.Case("v", "", args.shot, (ie.Appearance(actor, 0, args.shot - 1, start, end),))
        for frame, _ in ie.render(case, photos):
            frames.append(frame)
            owner.append(k)
    t0 = time.perf_counter()
    faces = ie.embed_frames(analyzer, frames)
    embed_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        enroll = {p: DATA / PHOTOS[p][0] for p in ENROLLED}
        gallery = Path(tmp) / "g.db"
        ie.enroll_gallery(analyzer, enroll, gallery)
        base = gallery.read_bytes()
        timings = {}
        for on, pixels in ((False, True), (True, False), (True, True)):
            gallery.write_bytes(base)
            cfg = PipelineConfig(
                gallery=gallery, match=MatchConfig(unknowns=UnknownsConfig(enabled=on, returned_gap_s=0))
            )
            namer = Namer(cfg)
            per_frame: list[float] = []
            end_s: list[float] = []
            got: dict[int, list[str | None]] = {}
            stored: dict[int, str] = {}
            wall = time.time() - 3600
            i = 0
            for k in range(len(visits)):
                t_vis = k * 10.0
                for j in range(args.shot):
                    ff = faces[i]
                    msg = wire.Faces(
                        cam="door",
                        seq=i,
                        pts=t_vis + j / FPS,
                        wall=wall + t_vis + j / FPS,
                        frame=frames[i] if pixels else None,
                        dets=ff.dets,
                        change=ff.change,
                    )
                    s = time.perf_counter()
                    result, _ = namer.name(msg)
                    per_frame.append(time.perf_counter() - s)
                    got.setdefault(k, []).extend(result.dets.unknowns or [])
                    i += 1
                empty = wire.Faces(
                    cam="door", seq=i, pts=t_vis + 4.0, wall=wall + t_vis + 4.0, dets=ff.dets[:0], change=0.0
                )
                s = time.perf_counter()
                _, events = namer.name(empty)
                if on:
                    end_s.append(time.perf_counter() - s)
                for e in events:
                    if e["type"] == "unknown_visit":
                        stored[k] = e["unknown"]
            namer.close()
            timings[on, pixels] = (statistics.median(per_frame), end_s)
            if on and pixels:
                report(visits, got, stored, gallery, args.shot)
        off, (bare, bare_ends) = timings[False, True][0], timings[True, False]
        on_med, ends = timings[True, True]
        print("\n### Cost on the match stage (Namer.name, this machine)\n")
        print("| | median per frame | per stored visit (track end, SQLite FULL sync) |")
        print("|---|---|---|")
        print(f"| clustering off | {off * 1e6:.0f} µs | - |")
        print(
            f"| clustering on, no pixels at match | {bare * 1e6:.0f} µs ({bare / off:.2f}x) | {statistics.median(bare_ends) * 1e3:.1f} ms median |"
        )
        print(
            f"| clustering on | {on_med * 1e6:.0f} µs ({on_med / off:.2f}x) | {statistics.median(ends) * 1e3:.1f} ms median |"
        )
        print(f"\n({len(frames)} frames; detection + embedding, not part of the above: {embed_s:.0f} s)")
    return 0


def scores(people: list[str], ids: list[str]) -> tuple[float, float, int]:
    """(purity, completeness, identities) of visits labelled with their person and identity."""
    by_id: dict[str, Counter[str]] = {}
    by_person: dict[str, Counter[str]] = {}
    for p, u in zip(people, ids, strict=True):
        by_id.setdefault(u, Counter())[p] += 1
        by_person.setdefault(p, Counter())[u] += 1
    n = len(people)
    purity = sum(c.most_common(1)[0][1] for c in by_id.values()) / n
    completeness = sum(c.most_common(1)[0][1] for c in by_person.values()) / n
    return purity, completeness, len(by_id)


def report(visits, got, stored, gallery: Path, shot: int) -> None:  # type: ignore[no-untyped-def]  # noqa: ANN001
    held = {k for k, (a, _) in enumerate(visits) if a.person not in ENROLLED}
    known = len(visits) - len(held)
    named_known = sum(1 for k in range(len(visits)) if k not in held and k in stored)
    ks = sorted(k for k in held if k in stored)
    people = [visits[k][0].person for k in ks]
    purity, completeness, n_ids = scores(people, [stored[k] for k in ks])
    print("\n### Live clustering (match stage, threshold 0.6, min_faces 3, join_ratio 1.0)\n")
    print("| visits of held-out people | stored | people | identities | purity | completeness |")
    print("|---|---|---|---|---|---|")
    print(f"| {len(held)} | {len(ks)} | {len(set(people))} | {n_ids} | {purity:.2f} | {completeness:.2f} |")
    print(f"\nEnrolled people's visits stored as unknown: {named_known} of {known}.")
    # Return: visits of a person whose identity already existed before the visit.
    first_id: dict[str, str] = {}
    frames_to_id, missed = [], 0
    for k in sorted(stored):
        person = visits[k][0].person
        if person in ENROLLED:
            continue
        if person in first_id:
            ids = got.get(k, [])
            hit = [j for j, u in enumerate(ids) if u == first_id[person]]
            if hit:
                frames_to_id.append(hit[0] + 1)
            else:
                missed += 1
        else:
            first_id[person] = stored[k]
    print("\n### Recognised on return\n")
    print("| returns | carrying the person's first id | frames to the id (median, max) |")
    print("|---|---|---|")
    n_ret = len(frames_to_id) + missed
    med = statistics.median(frames_to_id) if frames_to_id else float("nan")
    print(f"| {n_ret} | {len(frames_to_id)} | {med:.0f}, {max(frames_to_id, default=0)} (of {shot}) |")
    store = Unknowns.open(gallery, create=False)
    face_ids, owners, vecs = store.faces("dlib-resnet-v1")
    store.close()
    # Offline: the stored faces of held-out people, per face (each face's person from its visit).
    person_of_id = {stored[k]: visits[k][0].person for k in ks}
    truth = [person_of_id.get(f"unknown-{o}", "?") for o in owners.tolist()]
    keep = [i for i, t in enumerate(truth) if t != "?"]
    v, t = vecs[keep], [truth[i] for i in keep]
    print("\n### Offline re-clustering of the stored faces (per face)\n")
    print("| method | faces | identities | purity | completeness |")
    print("|---|---|---|---|---|")
    for name, labels in (
        ("live (as stored)", [f"unknown-{owners[i]}" for i in keep]),
        ("`unknowns cluster` (average linkage, 0.6)", threshold_clusters(v, 0.6, "euclidean").tolist()),
        (f"`unknowns cluster --k {len(set(t))}` (K-means)", kmeans(v, len(set(t)), "euclidean").tolist()),
    ):
        p, c, n = scores(t, [str(x) for x in labels])
        print(f"| {name} | {len(t)} | {n} | {p:.2f} | {c:.2f} |")
    _ = face_ids


if __name__ == "__main__":
    raise SystemExit(main())

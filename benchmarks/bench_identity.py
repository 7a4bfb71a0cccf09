"""The identity benchmark: do the names we output deserve trust? Prints markdown tables.

    python benchmarks/bench_identity.py [--frames N]

Part 1, labelled clips made from the shared photos (stream/pipeline/identity_eval.py): five people
enrolled from one photo each, clips of other photos of three of them and of strangers. For each case:
wrong names, per-frame recall of enrolled people, frames to first name (per appearance), identity
switches; for the match stage's Namer (tracks, margins, quality gate, scene cuts) and for a per-frame
baseline (each face named by its own nearest person within the threshold, no tracking).

Part 2, the shared 1080p walkway clip (nobody in it is enrolled): faces output with a name whose own
distance is over the threshold, named faces, tracks and name flips per track, both ways.

Detection and embedding run once per frame (the stages' code: MTCNN, quality, drop of non-faces, the
embedder), then both namings run on the same faces."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from clips import read_clip

from stream.gallery.tracking import flips_per_track
from stream.pipeline import identity_eval as ie
from stream.pipeline.config import PipelineConfig
from stream.pipeline.follow import FollowSettings

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CLIP = DATA / "video" / "facenet-pytorch-video.mp4"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=None, help="frames of the 1080p clip (default: all)")
    ap.add_argument(
        "--follow-max-age", type=int, default=0, help="embed.follow.max_age (0: off, the default)"
    )
    args = ap.parse_args(argv)
    from stream import doctor
    from stream.faces import FaceAnalyzer

    print(doctor.header())  # the machine the figures below were measured on
    analyzer = FaceAnalyzer()
    enroll, cast = ie.shared_cast(DATA)
    photos = ie.load_photos(cast)
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Path(tmp) / "g.db"
        ie.enroll_gallery(analyzer, enroll, gallery)
        cfg = PipelineConfig(gallery=gallery)
        # The same Namer with boxes only (no appearance, no scene cuts): what those two add.
        boxes_only = cfg.model_copy(deep=True)
        boxes_only.match.tracking.appearance_ratio = 1e9
        boxes_only.match.tracking.cut_change = 1.0
        t0 = time.monotonic()
        # Embeddings carried over as embed.follow.max_age N does (0: off, the default).
        follow = FollowSettings(max_age=args.follow_max_age)
        print(
            "| case | what | wrong names (tracked / per-frame) | recall | frames to first name "
            "| switches (tracked / boxes only) | embeddings carried over |"
        )
        print("|---|---|---|---|---|---|---|")
        for case in ie.cases(cast):
            clip = ie.render(case, photos)
            faces = ie.embed_frames(analyzer, [f for f, _ in clip], follow)
            n_faces, carried = ie.embeddings_saved(faces)
            truth = [t for _, t in clip]
            ours = ie.score(case, truth, ie.name_tracked(cfg, faces))
            base = ie.score(case, truth, ie.name_per_frame(cfg, faces))
            geo = ie.score(case, truth, ie.name_tracked(boxes_only, faces))
            print(
                f"| {case.name} | {case.what} | {ours.wrong} / {base.wrong} | "
                f"{ours.recall:.2f} / {base.recall:.2f} | {ours.first_name} / {base.first_name} "
                f"| {ours.switches} / {geo.switches} | {carried}/{n_faces} |",
                flush=True,
            )
        print(f"\n(cases: {time.monotonic() - t0:.0f} s)\n")

        frames = read_clip(CLIP, args.frames)
        faces = ie.embed_frames(analyzer, frames, follow)
        n_faces, carried = ie.embeddings_saved(faces)
        print(f"shared clip, embed.follow {follow}: {carried} of {n_faces} embeddings carried over")
        threshold = float(analyzer.embedder.spec.threshold)
        tracked = ie.name_tracked(cfg, faces)
        base = ie.name_per_frame(cfg, faces)
        n_faces = sum(len(f) for f in tracked)
        flips = flips_per_track((x.track or 0, x.name) for fr in tracked for x in fr)
        print(
            f"shared clip: {len(frames)} frames, {n_faces} faces, {len(flips)} tracks, threshold {threshold}"
        )
        print("| naming | named over their own threshold | faces named | name flips per track (max, total) |")
        print("|---|---|---|---|")
        print(
            f"| tracked | {ie.own_evidence_violations(tracked, threshold)} | "
            f"{sum(1 for fr in tracked for x in fr if x.name)} | {max(flips.values(), default=0)}, {sum(flips.values())} |"
        )
        print(
            f"| per-frame | {ie.own_evidence_violations(base, threshold)} | "
            f"{sum(1 for fr in base for x in fr if x.name)} | n/a |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

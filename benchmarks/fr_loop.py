"""The face_recognition library's own per-frame loop, as its examples/facerec_from_video_file.py runs it:
read a frame, HOG face_locations (the defaults), face_encodings, compare with the enrolled encodings.
Runs in the baseline's own venv (benchmarks/baseline_fr.py makes it), not in facestream's: it
imports nothing from this project. Prints one JSON object on stdout.

    python fr_loop.py --clip CLIP --enroll NAME=PHOTO [--enroll NAME=PHOTO ...] [--tolerance 0.6]"""

from __future__ import annotations

import argparse
import json
import sys
import time

import cv2
import face_recognition
import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip", required=True)
    ap.add_argument(
        "--enroll",
        action="append",
        default=[],
        help="NAME=PHOTO (the largest face HOG finds) or NAME=PHOTO@X1,Y1,X2,Y2 (that face box)",
    )
    ap.add_argument("--tolerance", type=float, default=0.6, help="face_recognition's default")
    args = ap.parse_args()
    t_start = time.monotonic()
    names, known = [], []
    for item in args.enroll:
        name, photo = item.split("=", 1)
        photo, _, box = photo.partition("@")
        image = face_recognition.load_image_file(photo)
        if box:  # a face HOG does not find: face_encodings takes its location (top, right, bottom, left)
            x1, y1, x2, y2 = (int(v) for v in box.split(","))
            locs = [(y1, x2, y2, x1)]
        else:
            locs = face_recognition.face_locations(image)
        if not locs:
            raise SystemExit(f"{photo}: face_recognition finds no face to enroll")
        largest = max(locs, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
        known.append(face_recognition.face_encodings(image, [largest])[0])
        names.append(name)
    cap = cv2.VideoCapture(args.clip)
    if not cap.isOpened():
        raise SystemExit(f"{args.clip}: cannot open")
    frames = []
    t0 = time.monotonic()
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        locs = face_recognition.face_locations(rgb)
        encs = face_recognition.face_encodings(rgb, locs)
        said = []
        for enc in encs:
            d = face_recognition.face_distance(known, enc) if known else np.empty(0)
            best = int(np.argmin(d)) if len(d) else -1
            said.append(names[best] if best >= 0 and d[best] <= args.tolerance else None)
        # (top, right, bottom, left) -> x1, y1, x2, y2
        frames.append({"boxes": [[x1, y1, x2, y2] for y1, x2, y2, x1 in locs], "names": said})
    loop = time.monotonic() - t0
    json.dump({"frames": frames, "loop_s": loop, "setup_s": t0 - t_start}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

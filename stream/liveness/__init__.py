"""Liveness per track (a photo or a screen held up to a door camera is not a person): dense eye
landmarks (`mesh`), blinks (`blink`), head yaw and planarity from the five detector landmarks
(`geometry`), and the per-track decision (`judge`). Runs only for cameras whose config asks."""

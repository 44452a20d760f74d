"""deploy/: speed and deployment of a trained network.

Holds params/FLOPs and the FPS harness (:mod:`.profiling`, :mod:`.gpu_timing`), inference variants and
graph rewrites (:mod:`.inference_variants`, :mod:`.inference_rewrites`), their accuracy
(:mod:`.variant_accuracy`), ONNX/OpenVINO export, and the training benchmarks (:mod:`.bench`,
:mod:`.bench_ops`).

May import: the shared bottom layer, data/, model/, training/ and evaluation/.
"""

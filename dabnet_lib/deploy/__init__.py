"""deploy/: speed and deployment of a trained network.

Holds params/FLOPs and the FPS harness (:mod:`.profiling`, :mod:`.gpu_timing`), inference variants (their
registry and CPU builds in :mod:`.inference_variants`, accelerator builds in :mod:`.device_builders`) and graph
rewrites (:mod:`.inference_rewrites`), their accuracy
(:mod:`.variant_accuracy`), ONNX/OpenVINO export, and the training benchmarks (:mod:`.bench`,
:mod:`.bench_ops`).

May import: the shared bottom layer, data/, model/, training/ and evaluation/.
"""

"""data/: datasets and what is computed from them alone.

Holds ``CamVid`` and ``Cityscapes`` (class names, palettes, ignore index, splits: :mod:`.datasets`), the
statistics cache (:mod:`.statistics`), the training and evaluation transforms (:mod:`.transforms`), label
colouring (:mod:`.colors`), how much of a split fits in RAM (:mod:`.host_memory`) and ``make data`` setup
(:mod:`.data_setup`).

May import: the shared bottom layer (errors, atomic_files, paths, devices, machine). Nothing above it.
"""

"""evaluation/: what a finished run is worth and what it predicts.

Holds checkpoint evaluation and best-of-last selection (:mod:`.evaluation`), prediction on folders and
the Cityscapes export (:mod:`.inference`).

May import: the shared bottom layer, data/, model/ and training/.
"""

"""training/: turning a recipe into a run folder (checkpoints, metrics.jsonl, curves.png).

Holds recipes and profiles, the schedule, losses, the optimisation step, precision/layout choice
(:mod:`.autotune`), the trainer (:mod:`.engine`) with its callback events, ETA and curves, DDP
(:mod:`.distributed`), and the validation it runs: the confusion matrix (:mod:`.metrics`), the forward pass to
class maps (:mod:`.prediction`) and the loop that scores a model on a split (:mod:`.validation`), which
evaluation/ reuses.

May import: the shared bottom layer, data/ and model/.
"""

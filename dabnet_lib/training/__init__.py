"""training/: turning a recipe into a run folder (checkpoints, metrics.jsonl, curves.png).

Holds recipes and profiles, the schedule, losses, the optimisation step, precision/layout choice
(:mod:`.autotune`), the trainer (:mod:`.engine`: what it trains with from :mod:`.run_builder`, the checkpointed
:class:`~.train_state.TrainState`, :func:`~.epoch_loop.train_one_epoch`, the run folder's
:class:`~.run_writer.RunWriter`) with its callback events, ETA and curves, DDP
(:mod:`.distributed`), and the validation it runs: the confusion matrix (:mod:`.metrics`), the forward pass to
class maps (:mod:`.prediction`) and the loop that scores a model on a split (:mod:`.validation`), which
evaluation/ reuses.

May import: the shared bottom layer, data/ and model/.
"""

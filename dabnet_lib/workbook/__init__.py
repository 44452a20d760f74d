"""workbook/: what the notebooks call, and the papermill runner that executes them.

Holds data exploration, the DAB ablation sweep and its reports, qualitative results, the viewer widget,
live training progress and TensorBoard logging (:mod:`.live_progress`, :mod:`.tensorboard_log`), figures
(:mod:`.visualize`), report tables, the paper's figures (:mod:`.paper`) and the notebook runner
(:mod:`.runner`; ``python -m dabnet_lib.workbook run 03``).

May import: every layer below it (shared, data/, model/, training/, evaluation/, deploy/); only cli.py
imports it.
"""

"""dabnet_lib: DABNet (Li & Kim, BMVC 2019) model, data, training, evaluation and profiling.

Sub-packages along the data flow, each importing only those before it:
data -> model -> training -> evaluation -> deploy -> workbook, with cli.py on top. Below them all,
the shared modules errors, atomic_files, paths, devices and machine import no sub-package.
"""

__version__ = "0.1.0"

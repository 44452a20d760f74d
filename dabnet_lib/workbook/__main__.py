"""``python -m dabnet_lib.workbook run 03_training ...``: the notebook runner (:mod:`dabnet_lib.workbook.runner`)."""

import sys

from .runner import main

sys.exit(main())

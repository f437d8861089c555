"""``python -m defectseg.report SWEEP_DIR [--out DIR] [--no-plots]``: see :mod:`defectseg.report.write`."""

import sys

from defectseg.report.write import main

sys.exit(main())

"""``python -m defectseg.data.synthetic``: see :mod:`defectseg.data.synthetic.cli`."""

from defectseg.data.synthetic.cli import main

raise SystemExit(main())

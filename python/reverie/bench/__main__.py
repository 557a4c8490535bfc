"""``python -m reverie.bench [--quick] [--out DIR]``: the side-by-side comparison."""

import sys

from .runner import main

sys.exit(main())

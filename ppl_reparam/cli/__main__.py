"""``python -m ppl_reparam.cli``: the ``ppl-reparam`` command."""

import sys

from . import main

sys.exit(main())

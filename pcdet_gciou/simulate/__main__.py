"""``python -m pcdet_gciou.simulate``: see :mod:`pcdet_gciou.simulate.cli`."""

import sys

from pcdet_gciou.simulate.cli import main

sys.exit(main())

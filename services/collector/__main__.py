"""`python -m pyfilter.collector`"""

import sys

from . import privsep

# Started as root: leave the helper that lists Docker's folder, then drop
# root. Before the collector's own imports, which the helper does not need:
# what both processes hold stays shared only until one of them writes to it.
privsep.split()

from .main import main  # noqa: E402

sys.exit(main())

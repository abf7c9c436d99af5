import sys

from pyfilter.api.app import main

sys.exit(main())

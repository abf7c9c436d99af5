import sys

from pyfilter.cli.main import main

sys.exit(main())

import sys

from pyfilter.notifier.main import main

sys.exit(main())

import sys

from pyfilter.detector.main import main

sys.exit(main())

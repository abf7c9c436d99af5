import sys

from pyfilter.enforcer.main import main

sys.exit(main())

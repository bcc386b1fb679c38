import sys

from lrprof.cli import main

sys.exit(main())

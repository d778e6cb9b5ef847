import sys

from ti.cli import main

sys.exit(main())

import sys

from petq.cli import main

sys.exit(main())

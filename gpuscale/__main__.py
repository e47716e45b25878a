import sys

from gpuscale.cli import main

sys.exit(main())

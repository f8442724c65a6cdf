import sys

from prefero.cli import main

sys.exit(main())

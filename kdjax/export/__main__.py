"""`python -m kdjax.export SRC DST ...`."""
import sys

from kdjax.export.cli import main

sys.exit(main())

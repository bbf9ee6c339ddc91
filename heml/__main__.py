"""python -m heml: the heml command line."""

import sys

from .cli import main

sys.exit(main())

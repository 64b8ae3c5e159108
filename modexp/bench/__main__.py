"""`python -m modexp.bench`: the same as `modexp bench`."""

import sys

from . import main

sys.exit(main())

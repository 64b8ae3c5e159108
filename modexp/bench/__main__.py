"""`python -m modexp.bench`: the same as `modexp bench` (one entry point, the CLI's flags). Kept out of the
package's __init__ so that the package never imports the CLI that imports it."""

import sys

from modexp.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))

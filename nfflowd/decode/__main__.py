"""``python -m nfflowd.decode``: see the package docstring."""

import sys

from nfflowd.decode import main

raise SystemExit(main(sys.argv[1:]))

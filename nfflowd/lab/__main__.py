"""``python -m nfflowd.lab``: see the package docstring."""

import sys

from nfflowd.lab import main

raise SystemExit(main(sys.argv[1:]))

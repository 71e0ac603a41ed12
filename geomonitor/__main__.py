"""``python -m geomonitor report RUN [-o report.html]``: see :mod:`geomonitor.cli`."""
import sys

from geomonitor.cli import main

sys.exit(main())

"""Command-line entry points (``cyb-train``, ``cyb-experiment``, ``cyb-analyze``, ``cyb-generate``,
``cyb-prepare-data``): absl flags, then one call into the library. ``launch/*.py`` run them
from a checkout."""

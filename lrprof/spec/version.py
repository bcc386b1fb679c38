"""The package's version, in one place (`lrprof.__version__` and every report read it)."""

__version__ = "0.1.0"

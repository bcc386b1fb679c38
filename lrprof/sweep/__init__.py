"""sweep: see lrprof/__init__.py for the layout."""

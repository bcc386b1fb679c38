"""lrprof: what a spatially adaptive aggregation layer really costs, and whether it behaves
like its complexity formula says."""

__version__ = "0.1.0"

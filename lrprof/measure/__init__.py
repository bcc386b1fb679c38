"""Measurement: timing, memory, counting and device facts, each in its own module."""

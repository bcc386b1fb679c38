"""What a regression gate needs besides matching rows: the statistics that decide whether a
latency change is real (`stats`), and a strict reading of the reports it is given
(`validate`)."""

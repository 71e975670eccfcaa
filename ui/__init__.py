"""``stagetrace ui``: a local web UI over any Backend (search, trace view, investigate from the plot)."""

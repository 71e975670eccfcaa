"""The incident loop: ``stagetrace watch`` (alert rules whose alerts carry their root cause) and ``stagetrace postmortem``."""

"""Commands (filled in by the work that owns them)."""

"""Worker processes for the chaos and end-to-end tests (run with ``python -m``)."""

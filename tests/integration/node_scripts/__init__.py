"""Scripts the node integration tests run in subprocesses (crash, resume, answer from afar)."""

"""pytest fixtures for the real parts the tests talk to (filled in by tests/support/*)."""

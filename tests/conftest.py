"""Shared fixtures: a real Prometheus, the Kubernetes API stand-in, a synthetic inference server."""

pytest_plugins = ["tests.support.fixtures"]

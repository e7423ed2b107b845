"""Helpers for the flow runtime tests: store factories, test stores, scripts run in subprocesses."""

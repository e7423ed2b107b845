"""Typed keys of the sidecar's ``web.Application`` state.

Shared by the app factory (``sidecar/app.py``), the OTLP ingest and the resume API, so
every module reads the same objects without string keys.

=================  ===========================================================
``STORE_KEY``      the checkpoint store (a :class:`checkpoint.store.BaseStore`)
``SETTINGS_KEY``   the service settings (``sidecar.config.Settings``)
``METRICS_KEY``    the Prometheus metrics object (``sidecar.metrics``)
``EVENTS_KEY``     the per-run :class:`sidecar.events.EventBroker`
``TOKENS_KEY``     bearer token -> tenant id; absent or empty: no authentication
=================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from checkpoint.store import BaseStore

if TYPE_CHECKING:
    from sidecar.events import EventBroker

__all__ = ["EVENTS_KEY", "METRICS_KEY", "SETTINGS_KEY", "STORE_KEY", "TOKENS_KEY"]

STORE_KEY = web.AppKey("flowpoint.store", BaseStore)
# Settings and metrics are typed Any here so this module imports neither (no cycle with
# the modules that own them); their owners re-declare nothing, they import these keys.
SETTINGS_KEY: web.AppKey[Any] = web.AppKey("flowpoint.settings")
METRICS_KEY: web.AppKey[Any] = web.AppKey("flowpoint.metrics")
EVENTS_KEY: web.AppKey[EventBroker] = web.AppKey("flowpoint.events")
TOKENS_KEY: web.AppKey[Mapping[str, str]] = web.AppKey("flowpoint.tokens")

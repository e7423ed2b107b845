"""The Flowpoint sidecar: OTLP checkpoint ingest, group commit to PostgreSQL, resume API.

``create_app(settings, store)`` (in :mod:`sidecar.app`) builds the aiohttp application;
``flowpoint serve`` (:mod:`sidecar.server`) runs it as a service. Submodules are imported
on use so ``import sidecar`` stays light.
"""

from __future__ import annotations

__all__: list[str] = []

"""The kopf operator: handler registration and settings only.

Handlers are thin: they read, call the pure core, apply, patch status. Settings are
changed only in `@kopf.on.startup` (kopf's own advice).
"""

from __future__ import annotations

import os

import kopf

from .api import GROUP, VERSION


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    # kopf's bookkeeping (handler progress, last-handled spec) goes to annotations under
    # our own prefix, not to `status`: the CRDs' status schemas stay strict (no
    # preserve-unknown-fields), so anything kopf wrote to status would be pruned.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # A silent watch stream must never stall the operator.
    settings.watching.server_timeout = int(os.environ.get("GENFORGE_WATCH_SERVER_TIMEOUT", "300"))
    settings.watching.client_timeout = settings.watching.server_timeout + 30
    settings.watching.connect_timeout = 30
    settings.posting.level = 20  # INFO and above become Events


@kopf.on.login()
def login(**kwargs):
    server = os.environ.get("GENFORGE_API_SERVER")
    if server:  # `genforge local` and the test harness: an emulated API server
        return kopf.ConnectionInfo(server=server, insecure=True, scheme="Bearer", token="genforge-local")
    return kopf.login_via_client(**kwargs)


@kopf.on.create(GROUP, VERSION, "trainingruns")
def trainingrun_created(meta, patch, **_):
    patch.status["phase"] = "Pending"
    patch.status["observedGeneration"] = meta.get("generation", 1)

"""Watched folders inside the server (``server.watch``): one :class:`~ingest.watch.FolderSync` thread per folder.

Each sync writes through the server's :class:`~api.jobs.WriterGate`, like the upload worker, so uploads, deletes
and folder syncs of one collection take turns; readers see each file once it is committed. After a sync that
changed the collection, its abstention threshold is recalibrated under the same gate. A folder that does not
exist is logged and skipped: the server still starts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ingest.pipeline import IngestReport
from ingest.watch import FolderSync

if TYPE_CHECKING:
    from api.service import RagService

logger = logging.getLogger(__name__)


def start_folder_syncs(service: RagService) -> list[FolderSync]:
    """Start a sync thread for every folder of ``service.settings.server.watch``; stop them with
    :func:`stop_folder_syncs`."""
    syncs = []
    for folder in service.settings.server.watch:
        sync = FolderSync(
            service.workspace, folder, hold=service.gate.hold, on_sync=_recalibrator(service, folder.collection)
        )
        if not sync.root.is_dir():
            logger.error("server.watch: %s is not a folder; not syncing collection %s", sync.root, sync.name)
            continue
        logger.info("syncing folder %s into collection %s", sync.root, sync.name)
        syncs.append(sync.start())
    return syncs


def stop_folder_syncs(syncs: list[FolderSync], timeout: float = 30.0) -> None:
    for sync in syncs:
        sync.request_stop()  # all of them stop at once, then each is waited for
    for sync in syncs:
        sync.stop(timeout)


def _recalibrator(service: RagService, name: str):
    def after_sync(report: IngestReport) -> None:
        if not (report.added or report.replaced or report.removed):
            return
        from rag.calibration import recalibrate

        with service.gate.hold(name):
            recalibrate(service.workspace, name, quiet=True)

    return after_sync

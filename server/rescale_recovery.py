"""A server's start when a rescale has touched its checkpoint folder.

- ``layout.json`` (a committed rescale) wins over the flags: the server
  takes up that layout (or stays retired). If that layout has no checkpoint
  of its own yet (a crash between COMMIT and SETTLE), its state is the old
  servers' cuts plus the write-ahead log since the commit: it is rebuilt on a
  thread once the server serves (peers may be restarting too, and need this
  server's cut meanwhile), every request but cut reads and status refused
  with ``RescalingError`` until it is whole.
- ``rescale.json`` (a rescale still pending): an old server comes back from
  its cut, in the old layout, frozen; a spare waits again (an adoption is
  made again from the cuts by ADOPT or COMMIT).
- A server beyond its cluster, with neither, is a spare.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from adamax_ps.server import checkpoint
from adamax_ps.server.rescale_files import LAYOUT_FILE, PENDING_FILE, pair

if TYPE_CHECKING:
    from adamax_ps.server.rescale import ServerRescale

log = logging.getLogger("adamax_ps.rescale")

RETRY_FIRST, RETRY_MOST = 0.2, 5.0  # seconds between tries to reach the cuts


def recover(rescale: ServerRescale) -> None:
    """Take up what the folder records (see the module docstring)."""
    service, standing, files = rescale.service, rescale.standing, rescale.files
    layout = files.read(LAYOUT_FILE)
    pending = files.read(PENDING_FILE)
    if layout is not None:
        standing.addresses = list(layout.get("addresses", []))
        standing.http_addresses = list(layout.get("http_addresses", []))
        standing.rescale_id = layout.get("rescale_id", "")
        standing.cut_sequence = int(layout.get("cut_sequence", 0))
        if standing.cut_sequence:  # peers may still need it
            service.persistence.protected = frozenset({rescale.own_cut()})
        if pending is not None and pending["rescale_id"] == standing.rescale_id:
            files.remove(PENDING_FILE)  # it crashed inside COMMIT
            pending = None
        if layout.get("retired"):
            standing.state = "retired"
            service.gate.refuse(rescale._retired_reason())
            return
        service.set_layout(layout["server_index"], layout["num_servers"])
        service.journal_claim()  # layout.json now says whose folder it is
        if layout.get("settling") and not _settled(rescale, layout):
            _rebuild_later(rescale, layout["sources"])
            return
    if pending is None:
        if service.settings.server_index >= service.settings.num_servers:
            standing.state = "spare"
            return
        service.restore()
        return
    standing.rescale_id = pending["rescale_id"]
    standing.cut_sequence = int(pending.get("cut_sequence") or 0)
    standing.old = pair(pending.get("old"))
    if standing.old is None:  # a spare, its adoption lost: it waits again
        standing.state = "spare"
        return
    service.set_layout(*standing.old)  # an old server: back to its cut
    service.journal_claim()
    service.persistence.protected = frozenset({rescale.own_cut()})
    service.restore(only=rescale.own_cut())
    standing.state = "frozen"
    service.gate.refuse(rescale._frozen_reason())
    service.persistence.paused = True
    log.warning(
        "rescale %s is pending: serving reads of its cut, refusing changes "
        "until `adamax-ps rescale` finishes or aborts it",
        standing.rescale_id,
    )


def _settled(rescale: ServerRescale, layout: dict[str, Any]) -> bool:
    """Whether a checkpoint of the new layout was written after the commit
    (a crash came before ``layout.json`` said so): then it is the base,
    and the record is mended."""
    found = checkpoint.checkpoints(rescale.folder)
    if not found or found[-1][0] <= int(layout.get("settles_after", 0)):
        return False
    rescale.files.settled(layout)
    return True


def _rebuild_later(rescale: ServerRescale, sources: dict[str, Any]) -> None:
    """Serve, refusing everything but cut reads, while a thread rebuilds the
    state from the cuts and the log."""
    service, standing = rescale.service, rescale.standing
    standing.old = pair(sources.get("old"))
    standing.state, standing.settling, standing.importing = "serving", True, True
    service.gate.refuse(rescale.rebuilding_reason())
    service.persistence.paused = True
    rescale.rebuilt.clear()
    threading.Thread(
        target=_rebuild, args=(rescale, sources), name="rescale-rebuild", daemon=True
    ).start()


def _rebuild(rescale: ServerRescale, sources: dict[str, Any]) -> None:
    """Import the cuts and replay the log, trying again until the old
    servers answer; then serve."""
    service, standing = rescale.service, rescale.standing
    wait = RETRY_FIRST
    while True:
        try:
            with rescale._lock:
                readers = rescale.readers(sources["old_addresses"])
                try:
                    nbytes = service.persistence.rebuild(
                        readers, int(sources["split_bytes"]), int(sources["wal_from"])
                    )
                finally:
                    for reader in readers:
                        reader.close()
            break
        except Exception as e:  # a peer not up yet, most often: try again
            service.persistence.reset()
            standing.rebuild_error = f"{type(e).__name__}: {e}"
            service.gate.refuse(rescale.rebuilding_reason())
            log.warning(
                "rescale %s: rebuilding from the cuts failed (%s); trying again "
                "in %.1f s",
                standing.rescale_id,
                e,
                wait,
            )
            if rescale.stopped.wait(wait):
                return
            wait = min(2 * wait, RETRY_MOST)
    standing.importing, standing.old, standing.rebuild_error = False, None, ""
    rescale._thaw()
    rescale.rebuilt.set()
    log.info(
        "rescale %s: rebuilt %d bytes from the cuts and %d log records",
        standing.rescale_id,
        nbytes,
        service.replayed,
    )

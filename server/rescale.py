"""One server's part in rescaling a running cluster (``adamax-ps rescale``).

The driver takes every server through the phases (idempotent per rescale id):

- FREEZE (the old cluster's servers): close the change gate (no change
  starts; those in flight finish), write the cut (a checkpoint), and record
  the rescale as pending (``rescale.json``). Reads still see the cut.
- ADOPT (the new cluster's servers, spares included): empty the state and
  take this server's rows of every old server's cut (its own from disk, the
  others' over gRPC, ``checkpoint_remote``); still pending. Nothing is
  written but the record: the adopted state is a function of the cuts.
- COMMIT: ``layout.json`` records the new layout and where its state comes
  from (this server's commit point), and the server serves it; a server
  left out of the new cluster retires (refuses everything, naming the new
  cluster). Until SETTLE the cuts stand in for the new layout's checkpoint:
  a restart rebuilds the state from them (and the write-ahead log since the
  commit), ``rescale_recovery``.
- SETTLE: the first checkpoint of the new layout (any checkpoint after the
  commit settles it; the driver asks for one at once, while workers push).
- RELEASE: once every server settled, each lets go of its cut.
- ABORT (before any commit): back to the old layout from the cut, serving.

A server restarted while a rescale is pending comes back from its cut, in
the old layout, frozen (a spare: waiting): the driver, run again, finishes
the rescale (or aborts it): after any crash, the old layout or the new,
never a mix. A worker whose view is old is refused with the new addresses
(``check_view``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamax_ps.server import checkpoint, rescale_recovery
from adamax_ps.server.checkpoint_remote import RemoteCheckpointReader
from adamax_ps.server.errors import (
    ClusterViewError,
    FailedPreconditionError,
    InvalidArgumentError,
    RescalingError,
)
from adamax_ps.server.persistence import CheckpointInfo
from adamax_ps.server.rescale_cuts import CutMoves
from adamax_ps.server.rescale_files import (
    LAYOUT_FILE,
    PENDING_FILE,
    RescaleFiles,
    Standing,
    pair,
)

if TYPE_CHECKING:
    from adamax_ps.server.cut_transfer import DirectReads
    from adamax_ps.server.service import ParameterService

log = logging.getLogger("adamax_ps.rescale")

FREEZE_TIMEOUT = 60.0
SETTLE_TIMEOUT = 600.0  # a SETTLE waits this long for a rebuild to end


class ServerRescale(CutMoves):
    """The rescale phases of one service (see the module docstring)."""

    def __init__(
        self,
        service: ParameterService,
        token: str | None = None,
        credentials: Any = None,
        reader: Callable[..., checkpoint.CheckpointReader] = RemoteCheckpointReader,
    ) -> None:
        self.service = service
        self.token = token
        self.credentials = credentials  # gRPC TLS to the peers, or None
        self.reader = reader
        folder = service.settings.checkpoint_dir
        self.folder = Path(folder) if folder is not None else None
        self.files = RescaleFiles(self.folder)
        self.standing = Standing()
        self.rebuilt = threading.Event()  # set while no rebuild is under way
        self.rebuilt.set()
        self.stopped = threading.Event()  # the service closed: stop rebuilding
        self.http: tuple[int, bool] = (0, False)  # this server's HTTP port, TLS
        self.direct: DirectReads | None = None  # sendfile of cuts to peers
        self._lock = threading.Lock()  # one phase at a time
        self._settle_lock = threading.Lock()
        service.persistence.after_checkpoint = self._settled_by

    # Start --------------------------------------------------------------------------

    def committed_layout(self) -> dict[str, Any] | None:
        """The layout this server's folder committed to, if a rescale did."""
        return self.files.read(LAYOUT_FILE)

    def recover(self) -> None:
        """At start, before serving: take up what the folder records (see
        ``rescale_recovery``). Restores the state (or starts rebuilding it)."""
        rescale_recovery.recover(self)

    # Phases -------------------------------------------------------------------------

    def freeze(self, rescale_id: str, timeout: float = FREEZE_TIMEOUT) -> Standing:
        """Close the gate, let changes in flight finish, write the cut."""
        _need_id(rescale_id)
        service, standing = self.service, self.standing
        with self._lock:
            if standing.rescale_id == rescale_id and standing.state in (
                "frozen",
                "adopted",
            ):
                return standing
            if standing.state != "serving" or standing.cut_sequence:
                raise FailedPreconditionError(
                    f"cannot freeze for rescale {rescale_id}: this server is "
                    f"{standing.state} in rescale {standing.rescale_id or '-'} "
                    "(a committed rescale must settle and release first: run "
                    "`adamax-ps rescale` again)"
                )
            if self.folder is None:
                raise FailedPreconditionError(
                    "a rescale needs every server to have a --checkpoint-dir"
                )
            standing.state = "freezing"  # changes in flight drain
            try:
                service.gate.close(self._frozen_reason(rescale_id), timeout)
                try:
                    service.journal.settle()
                    cut = service.persistence.checkpoint()
                except BaseException:
                    service.gate.open()
                    raise
            finally:
                standing.state = "serving"
            service.persistence.paused = True
            old = service.layout
            self.files.write(
                PENDING_FILE,
                {
                    "rescale_id": rescale_id,
                    "phase": "frozen",
                    "cut_sequence": cut.sequence,
                    "old": list(old),
                },
            )
            service.persistence.protected = frozenset({cut.path})
            standing.state, standing.rescale_id = "frozen", rescale_id
            standing.cut_sequence, standing.old = cut.sequence, old
            log.info(
                "frozen for rescale %s: cut %s (%d bytes in %.2f s)",
                rescale_id,
                cut.path,
                cut.nbytes,
                cut.seconds,
            )
            return standing

    def adopt(
        self,
        rescale_id: str,
        new: tuple[int, int],
        addresses: list[str],
        old_addresses: list[str],
        split_bytes: int = 0,
    ) -> Standing:
        """Become server ``new[0]`` of ``new[1]`` from the old servers' cuts
        (still pending: served only after COMMIT)."""
        _need_id(rescale_id)
        service, standing = self.service, self.standing
        index, count = new
        if not 0 <= index < count or len(addresses) != count:
            raise InvalidArgumentError(
                f"a new layout of {count} servers needs {count} addresses and an "
                f"index below it. Received: index {index}, {len(addresses)} addresses"
            )
        with self._lock:
            if standing.rescale_id == rescale_id and standing.state == "adopted":
                return standing
            if standing.state == "spare" and standing.rescale_id in ("", rescale_id):
                standing.rescale_id = rescale_id
            elif not (standing.state == "frozen" and standing.rescale_id == rescale_id):
                raise FailedPreconditionError(
                    f"cannot adopt for rescale {rescale_id}: this server is "
                    f"{standing.state} (freeze the old servers first)"
                )
            if self.folder is None:
                raise FailedPreconditionError(
                    "a rescale needs every server to have a --checkpoint-dir"
                )
            sources = {
                "old": list(standing.old) if standing.old else None,
                "old_addresses": list(old_addresses),
                "split_bytes": split_bytes or service.settings.cluster_split_bytes,
                "wal_from": self._wal_from(),
            }
            self.take(sources, (index, count))
            self.files.write(
                PENDING_FILE,
                {
                    "rescale_id": rescale_id,
                    "phase": "adopted",
                    "cut_sequence": standing.cut_sequence,
                    "old": sources["old"],
                    "new": [index, count],
                    "addresses": list(addresses),
                    "sources": sources,
                },
            )
            standing.state, standing.new = "adopted", (index, count)
            standing.addresses = list(addresses)
            log.info("adopted server %d of %d for rescale %s", index, count, rescale_id)
            return standing

    def commit(
        self, rescale_id: str, addresses: list[str], http: list[str] | None = None
    ) -> Standing:
        """Serve the adopted layout, or (not in it) retire; ``http``: the
        new cluster's HTTP addresses (for workers on HTTP), if known."""
        _need_id(rescale_id)
        standing = self.standing
        with self._lock:
            if standing.rescale_id == rescale_id and standing.state in (
                "serving",
                "retired",
            ):
                return standing  # committed already
            pending = self.files.read(PENDING_FILE)
            if pending is None or pending["rescale_id"] != rescale_id:
                raise FailedPreconditionError(
                    f"rescale {rescale_id} is not pending on this server"
                )
            layout: dict[str, Any] = {"rescale_id": rescale_id}
            if http:
                layout["http_addresses"] = list(http)
            if standing.cut_sequence:
                layout["cut_sequence"] = standing.cut_sequence  # kept for peers
            if pending["phase"] == "frozen":  # left out of the new cluster
                layout.update(retired=True, num_servers=len(addresses))
                layout["addresses"] = list(addresses)
            else:
                if standing.state != "adopted":  # restarted since it adopted
                    self.take(pending["sources"], pair(pending["new"]))
                layout["server_index"], layout["num_servers"] = pending["new"]
                layout["addresses"] = list(pending["addresses"])
                layout.update(settling=True, sources=pending["sources"])
                found = checkpoint.checkpoints(self.folder)
                layout["settles_after"] = found[-1][0] if found else 0
            self.files.write(LAYOUT_FILE, layout)  # the commit point
            self._finish_commit(layout)
            return standing

    def settle(self, rescale_id: str, timeout: float = SETTLE_TIMEOUT) -> Standing:
        """Write the new layout's first checkpoint (after its rebuild, if a
        restart started one): the cuts no longer stand in for it."""
        _need_id(rescale_id)
        standing = self.standing
        if standing.rescale_id != rescale_id or standing.state not in (
            "serving",
            "retired",
        ):
            raise FailedPreconditionError(
                f"rescale {rescale_id} is not committed on this server"
            )
        if not self.rebuilt.wait(timeout):
            raise RescalingError(self.rebuilding_reason())
        if standing.settling:  # the checkpoint settles it (_settled_by)
            self.service.persistence.checkpoint()
        return standing

    def release(self, rescale_id: str) -> Standing:
        """Let go of the cut: every server of the new layout has settled."""
        _need_id(rescale_id)
        standing = self.standing
        with self._lock:
            if standing.rescale_id != rescale_id or not standing.cut_sequence:
                return standing
            if standing.state not in ("serving", "retired") or standing.settling:
                raise FailedPreconditionError(
                    f"rescale {rescale_id} is not settled on this server: release "
                    "comes after every server's SETTLE"
                )
            layout = self.committed_layout() or {}
            layout.pop("cut_sequence", None)
            self.files.write(LAYOUT_FILE, layout)
            standing.cut_sequence = 0
            self.service.persistence.protected = frozenset()
            log.info("rescale %s released its cut", rescale_id)
            return standing

    def abort(self, rescale_id: str) -> Standing:
        """Back to the old layout, from the cut (a spare: back to waiting)."""
        _need_id(rescale_id)
        standing = self.standing
        with self._lock:
            pending = self.files.read(PENDING_FILE)
            if pending is None or pending["rescale_id"] != rescale_id:
                if standing.rescale_id == rescale_id and standing.state in (
                    "serving",
                    "retired",
                ):
                    raise FailedPreconditionError(
                        f"rescale {rescale_id} was committed on this server: it "
                        "cannot be aborted (finish it by committing every server)"
                    )
                return standing  # nothing of it here
            self._back_to_old(drop_newer=True)
            self.files.remove(PENDING_FILE)
            self.service.persistence.protected = frozenset()
            if standing.old is None:
                standing.state = "spare"
            else:
                standing.state = "serving"
                self._thaw()
            standing.old = standing.new = None
            standing.cut_sequence = 0
            standing.rescale_id = ""  # as if it never began
            layout = self.committed_layout() or {}
            standing.addresses = list(layout.get("addresses", []))
            standing.http_addresses = list(layout.get("http_addresses", []))
            log.info("rescale %s aborted", rescale_id)
            return standing

    # Checks for the transports ------------------------------------------------------

    def check_view(self, view: tuple[int, int] | None) -> None:
        """Refuse a change while this server is not serving a layout."""
        self.check_reads()
        state = self.standing.state
        if state == "retired":
            raise ClusterViewError(self._retired_reason())
        if state == "spare":
            raise FailedPreconditionError(
                "this server is a spare: it holds nothing until `adamax-ps rescale` "
                "takes it into the cluster"
            )

    def check_reads(self) -> None:
        """Refuse any look at the state while it is being rebuilt: it is
        half there."""
        if self.standing.importing:
            raise RescalingError(
                f"{self.rebuilding_reason()}; ask again when it serves"
            )

    def moved(self) -> str:
        """Where the cluster is now, for a view mismatch's message."""
        found = self.standing.addresses
        now = f"; the cluster is now {len(found)} servers at {','.join(found)}"
        return f"{now} (refresh the view)" if found else ""

    # Parts ----------------------------------------------------------------------------

    def _settled_by(self, info: CheckpointInfo) -> None:
        """A checkpoint of the new layout was written: it is the state's
        base from now on, no longer the cuts (called after each checkpoint)."""
        standing = self.standing
        with self._settle_lock:
            if not standing.settling or standing.state != "serving":
                return
            self.files.settled(self.committed_layout() or {})
            standing.settling = False  # the cut stays protected until RELEASE
            log.info(
                "rescale %s settled: checkpoint %s", standing.rescale_id, info.path
            )

    def _finish_commit(self, layout: dict[str, Any]) -> None:
        service, standing = self.service, self.standing
        standing.rescale_id = layout["rescale_id"]
        standing.addresses = list(layout.get("addresses", []))
        standing.http_addresses = list(layout.get("http_addresses", []))
        if layout.get("retired"):
            service.persistence.reset()
            standing.state = "retired"
            service.gate.refuse(self._retired_reason())
        else:
            service.journal_claim()
            standing.state = "serving"
            standing.settling = bool(layout.get("settling"))
            self._thaw()
        self.files.remove(PENDING_FILE)
        standing.old = standing.new = None
        log.info("rescale %s committed: %s", standing.rescale_id, standing.state)

    def _retired_reason(self) -> str:
        return (
            f"this server left the cluster in rescale {self.standing.rescale_id}"
            + self.moved()
        )

    def _thaw(self) -> None:
        self.service.persistence.paused = False
        self.service.gate.open()

    def rebuilding_reason(self) -> str:
        """Why calls wait while the state is rebuilt from the cuts (and why
        its last try failed, if one did)."""
        standing = self.standing
        failed = standing.rebuild_error
        return (
            f"rescale {standing.rescale_id}: this server is rebuilding its state "
            "from the cuts" + (f" (its last try failed: {failed})" if failed else "")
        )

    def _frozen_reason(self, rescale_id: str | None = None) -> str:
        return (
            f"rescale {rescale_id or self.standing.rescale_id} is under way: "
            "changes wait until it ends"
        )


def _need_id(rescale_id: str) -> None:
    if not rescale_id:
        raise InvalidArgumentError("a rescale call needs its rescale_id")

"""One server's part in rescaling a running cluster (``adamax-ps rescale``).

The driver takes every server through the phases (idempotent per rescale id):

- FREEZE (the old cluster's servers): close the change gate (no change
  starts; those in flight finish), write the cut (a checkpoint), and record
  the rescale as pending (``rescale.json``). Reads still see the cut.
- ADOPT (the new cluster's servers, spares included): empty the state, take
  this server's rows of every old server's cut (its own from disk, the
  others' over gRPC, ``checkpoint_remote``), checkpoint them as the new
  layout, and record that in ``rescale.json``; still pending.
- COMMIT: ``layout.json`` records the new layout (this server's commit
  point), and the server serves it; a server left out of the new cluster
  retires (refuses everything, naming the new cluster).
- ABORT: back to the old layout from the cut, serving; an adopted new
  layout's checkpoints are removed.

A server restarted while a rescale is pending comes back from its cut, in
the old layout, frozen: the driver, run again, finishes the rescale (or
aborts it): after any crash, the old layout or the new, never a mix. A
worker whose view is old is refused with the new addresses (``check_view``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamax_ps.server import checkpoint
from adamax_ps.server.checkpoint_remote import RemoteCheckpointReader
from adamax_ps.server.errors import (
    ClusterViewError,
    FailedPreconditionError,
    InvalidArgumentError,
    RescalingError,
)
from adamax_ps.server.rescale_files import (
    LAYOUT_FILE,
    PENDING_FILE,
    RescaleFiles,
    Standing,
)

if TYPE_CHECKING:
    from adamax_ps.server.service import ParameterService

log = logging.getLogger("adamax_ps.rescale")

FREEZE_TIMEOUT = 60.0


class ServerRescale:
    """The rescale phases of one service (see the module docstring)."""

    def __init__(
        self,
        service: ParameterService,
        token: str | None = None,
        reader: Callable[..., checkpoint.CheckpointReader] = RemoteCheckpointReader,
    ) -> None:
        self.service = service
        self.token = token
        self.reader = reader
        folder = service.settings.checkpoint_dir
        self.folder = Path(folder) if folder is not None else None
        self.files = RescaleFiles(self.folder)
        self.standing = Standing()
        self._lock = threading.Lock()  # one phase at a time

    # Start --------------------------------------------------------------------------

    def committed_layout(self) -> dict[str, Any] | None:
        """The layout this server's folder committed to, if a rescale did."""
        return self.files.read(LAYOUT_FILE)

    def recover(self) -> None:
        """At start, before serving: take up the layout this folder committed
        to (over the flags), or a pending rescale (restored from its cut, in
        the old layout, frozen), or, a server beyond its cluster, wait as a
        spare. Restores the state."""
        service, standing = self.service, self.standing
        layout = self.committed_layout()
        pending = self.files.read(PENDING_FILE)
        if layout is not None:
            standing.addresses = list(layout.get("addresses", []))
            standing.rescale_id = layout.get("rescale_id", "")
            if pending is not None and pending["rescale_id"] == standing.rescale_id:
                self.files.remove(PENDING_FILE)  # it crashed inside COMMIT
                pending = None
            if layout.get("retired"):
                standing.state = "retired"
                service.gate.refuse(self._retired_reason())
                return
            service.set_layout(layout["server_index"], layout["num_servers"])
            service.journal_claim()  # layout.json now says whose folder it is
        if pending is None:
            if service.settings.server_index >= service.settings.num_servers:
                standing.state = "spare"
                return
            service.restore()
            return
        standing.rescale_id = pending["rescale_id"]
        standing.addresses = list(pending.get("addresses") or [])
        standing.new = _pair(pending.get("new"))
        standing.old = _pair(pending.get("old"))
        if standing.old is None:  # a spare, adopted: adopted again
            self._reload_adopted(pending)
            standing.state = "adopted"
        else:  # a server of the old layout: back to its cut
            service.set_layout(*standing.old)
            service.journal_claim()
            standing.cut_sequence = int(pending["cut_sequence"])
            service.persistence.protected = frozenset({self._cut_path()})
            service.restore(only=self._cut_path())
            standing.state = "frozen"
        service.gate.refuse(self._frozen_reason())
        service.persistence.paused = True
        log.warning(
            "rescale %s is pending: serving reads of its cut, refusing changes "
            "until `adamax-ps rescale` finishes or aborts it",
            standing.rescale_id,
        )

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
            if standing.state != "serving":
                raise FailedPreconditionError(
                    f"cannot freeze for rescale {rescale_id}: this server is "
                    f"{standing.state}"
                    + (
                        f" (rescale {standing.rescale_id})"
                        if standing.rescale_id
                        else ""
                    )
                )
            if self.folder is None:
                raise FailedPreconditionError(
                    "a rescale needs every server to have a --checkpoint-dir"
                )
            service.gate.close(self._frozen_reason(rescale_id), timeout)
            try:
                service.journal.settle()
                cut = service.persistence.checkpoint()
            except BaseException:
                service.gate.open()
                raise
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
            log.info("frozen for rescale %s: cut %s", rescale_id, cut.path)
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
            if standing.state == "spare":
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
            readers = self._readers(old_addresses)
            standing.importing = True  # reads with a view wait (check_view)
            try:
                service.persistence.reset()
                service.set_layout(index, count)
                if standing.old is None:  # a spare: its log new, opened, empty
                    service.journal.discard()
                    service.journal_claim()
                    service.restore()
                info = service.persistence.import_cut(
                    readers, split_bytes or service.settings.cluster_split_bytes
                )
            except BaseException:
                self._back_to_old()
                raise
            finally:
                standing.importing = False
                for reader in readers:
                    reader.close()
            self.files.write(
                PENDING_FILE,
                {
                    "rescale_id": rescale_id,
                    "phase": "adopted",
                    "cut_sequence": standing.cut_sequence,
                    "old": list(standing.old) if standing.old else None,
                    "new": [index, count],
                    "new_sequence": info.sequence,
                    "addresses": list(addresses),
                },
            )
            protected = {info.path}
            if standing.old is not None:
                protected.add(self._cut_path())
            service.persistence.protected = frozenset(protected)
            standing.state, standing.new = "adopted", (index, count)
            standing.addresses = list(addresses)
            log.info(
                "adopted server %d of %d for rescale %s (%d bytes)",
                index,
                count,
                rescale_id,
                info.nbytes,
            )
            return standing

    def commit(self, rescale_id: str, addresses: list[str]) -> Standing:
        """Serve the adopted layout, or (not in it) retire."""
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
            if pending["phase"] == "frozen":  # left out of the new cluster
                pending["retired"] = True
                pending["addresses"] = list(addresses)
            elif standing.state == "frozen":  # restarted since it adopted
                self._reload_adopted(pending)
            layout = {
                "rescale_id": rescale_id,
                "addresses": list(pending.get("addresses") or addresses),
            }
            if pending.get("retired"):
                layout["retired"] = True
                layout["num_servers"] = len(addresses)
            else:
                layout["server_index"], layout["num_servers"] = pending["new"]
            self.files.write(LAYOUT_FILE, layout)  # the commit point
            self._finish_commit(pending)
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
            log.info("rescale %s aborted", rescale_id)
            return standing

    # Checks for the transports ------------------------------------------------------

    def check_view(self, view: tuple[int, int] | None) -> None:
        """Refuse a change while this server is not serving a layout."""
        if self.standing.importing:  # the state is being rebuilt
            raise RescalingError(self._frozen_reason())
        state = self.standing.state
        if state == "retired":
            raise ClusterViewError(self._retired_reason())
        if state == "spare":
            raise FailedPreconditionError(
                "this server is a spare: it holds nothing until `adamax-ps rescale` "
                "takes it into the cluster"
            )

    def moved(self) -> str:
        """Where the cluster is now, for a view mismatch's message."""
        found = self.standing.addresses
        now = f"; the cluster is now {len(found)} servers at {','.join(found)}"
        return f"{now} (refresh the view)" if found else ""

    # Parts ----------------------------------------------------------------------------

    def _readers(self, old_addresses: list[str]) -> list[checkpoint.CheckpointReader]:
        """One reader per old server's cut: this server's own from its folder."""
        standing = self.standing
        readers: list[checkpoint.CheckpointReader] = []
        try:
            for index, address in enumerate(old_addresses):
                if standing.old is not None and index == standing.old[0]:
                    readers.append(checkpoint.CheckpointReader(self._cut_path()))
                else:
                    readers.append(self.reader(address, 0, self.token))
        except BaseException:
            for reader in readers:
                reader.close()
            raise
        return readers

    def cut_path(self, sequence: int) -> Path:
        """The checkpoint a peer asks for (0: this rescale's cut)."""
        if self.folder is None:
            raise FailedPreconditionError("this server keeps no checkpoints")
        if sequence == 0:
            if self.standing.state not in ("frozen", "adopted", "retired") or not (
                self.standing.cut_sequence
            ):
                raise FailedPreconditionError(
                    "this server is not frozen for a rescale: its cut does not exist"
                )
            sequence = self.standing.cut_sequence
        path = self.folder / f"ckpt-{sequence:06d}"
        if not path.is_dir():
            raise FailedPreconditionError(f"checkpoint {sequence} is not here")
        return path

    def _cut_path(self) -> Path:
        return self.folder / f"ckpt-{self.standing.cut_sequence:06d}"

    def _reload_adopted(self, pending: dict[str, Any]) -> None:
        service = self.service
        service.persistence.reset()
        service.set_layout(*pending["new"])
        service.journal_claim()
        path = self.folder / f"ckpt-{int(pending['new_sequence']):06d}"
        service.restore(only=path)

    def _finish_commit(self, pending: dict[str, Any]) -> None:
        service, standing = self.service, self.standing
        layout = self.files.read(LAYOUT_FILE) or {}
        standing.rescale_id = pending["rescale_id"]
        standing.addresses = list(layout.get("addresses", []))
        if layout.get("retired"):
            service.persistence.reset()
            standing.state = "retired"
            service.gate.refuse(self._retired_reason())
        else:
            service.journal_claim()
            standing.state = "serving"
            self._thaw()
        self.files.remove(PENDING_FILE)
        service.persistence.protected = frozenset()
        standing.old = standing.new = None
        standing.cut_sequence = 0
        log.info("rescale %s committed: %s", standing.rescale_id, standing.state)

    def _back_to_old(self, drop_newer: bool = False) -> None:
        """Reload the cut in the old layout (a spare: empty again)."""
        service, standing = self.service, self.standing
        service.persistence.reset()
        if drop_newer and self.folder is not None:
            for sequence, path in checkpoint.checkpoints(self.folder):
                if sequence > standing.cut_sequence:
                    service.persistence.discard(path)
        if standing.old is None:
            index, count = service.config_layout
            service.set_layout(index, count)
            return
        service.set_layout(*standing.old)
        service.journal_claim()
        service.restore(only=self._cut_path())
        standing.state = "frozen"
        standing.new = None

    def _retired_reason(self) -> str:
        return (
            f"this server left the cluster in rescale {self.standing.rescale_id}"
            + self.moved()
        )

    def _thaw(self) -> None:
        self.service.persistence.paused = False
        self.service.gate.open()

    def _frozen_reason(self, rescale_id: str | None = None) -> str:
        return (
            f"rescale {rescale_id or self.standing.rescale_id} is under way: "
            "changes wait until it ends"
        )


def _need_id(rescale_id: str) -> None:
    if not rescale_id:
        raise InvalidArgumentError("a rescale call needs its rescale_id")


def _pair(value: Any) -> tuple[int, int] | None:
    return (int(value[0]), int(value[1])) if value else None

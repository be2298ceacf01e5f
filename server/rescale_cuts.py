"""How a rescale moves one server's state (a mixin of ``ServerRescale``):
the cuts it reads (its own from its folder, the others' over gRPC), the
cut it keeps for its peers, the import, and the way back to the old layout."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamax_ps.server import checkpoint, kept_rows
from adamax_ps.server.errors import FailedPreconditionError
from adamax_ps.server.rescale_files import Standing

if TYPE_CHECKING:
    from adamax_ps.server.service import ParameterService


class CutMoves:
    """The state's moves of ``ServerRescale`` (its attributes below)."""

    service: ParameterService
    standing: Standing
    folder: Path | None
    token: str | None
    credentials: Any
    reader: Callable[..., checkpoint.CheckpointReader]
    _lock: threading.Lock

    def take(self, sources: dict[str, Any], new: tuple[int, int]) -> None:
        """Empty the state and import this server's rows of the old servers'
        cuts as server ``new[0]`` of ``new[1]`` (phase lock held). Requests
        stating a view are refused meanwhile; a failure goes back to the
        old layout."""
        service, standing = self.service, self.standing
        readers = self.readers(sources["old_addresses"])
        standing.importing = True  # reads wait (check_view, check_reads)
        # An old server's state is its cut, frozen: the rows it keeps stay
        # in memory (server/kept_rows.py).
        held = kept_rows.held_rows(service.store) if standing.old else None
        try:
            service.persistence.reset()
            service.set_layout(*new)
            if standing.old is None:  # a spare: its log new, opened, empty
                service.journal.discard()
                service.journal_claim()
                service.restore()
            service.persistence.import_state(readers, int(sources["split_bytes"]), held)
        except BaseException:
            self._back_to_old()
            raise
        finally:
            standing.importing = False
            for reader in readers:
                reader.close()

    def readers(self, old_addresses: list[str]) -> list[checkpoint.CheckpointReader]:
        """One reader per old server's cut: this server's own from its folder."""
        standing = self.standing
        readers: list[checkpoint.CheckpointReader] = []
        try:
            for index, address in enumerate(old_addresses):
                if standing.old is not None and index == standing.old[0]:
                    readers.append(checkpoint.CheckpointReader(self.own_cut()))
                else:
                    readers.append(
                        self.reader(address, 0, self.token, self.credentials)
                    )
        except BaseException:
            for reader in readers:
                reader.close()
            raise
        return readers

    def cut_path(self, sequence: int) -> Path:
        """The checkpoint a peer asks for (0: the cut this server keeps for
        the rescale under way, until it is released)."""
        if self.folder is None:
            raise FailedPreconditionError("this server keeps no checkpoints")
        if sequence == 0:
            if not self.standing.cut_sequence:
                raise FailedPreconditionError(
                    "this server keeps no rescale's cut: it is not frozen for one"
                )
            sequence = self.standing.cut_sequence
        path = self.folder / f"ckpt-{sequence:06d}"
        if not path.is_dir():
            raise FailedPreconditionError(f"checkpoint {sequence} is not here")
        return path

    def own_cut(self) -> Path:
        return self.folder / f"ckpt-{self.standing.cut_sequence:06d}"

    def _wal_from(self) -> int:
        """The first log segment a restart replays after importing the cuts:
        the one the cut began (nothing was logged since), a spare's first."""
        if self.standing.old is None:
            return 0
        return checkpoint.wal_segment(self.own_cut())

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
        service.restore(only=self.own_cut())
        standing.state = "frozen"
        standing.new = None

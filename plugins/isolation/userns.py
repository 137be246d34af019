"""Each container's ids: a block of host ids of its own, or the host's.

A container with ids of its own has ids 0 to 65535 mapped onto a block of 65,536 host
ids that no other live container has (:class:`IdBlocks`): its root is an unprivileged
host user, and one container's processes never count against another's ``nproc``.
The block is recorded in the container's state, so a restarted daemon knows which
blocks are taken. Files keep the ids they have on disk: the init mounts the root and
the binds id-mapped (see README.md here), which this kernel does for ext4, xfs,
btrfs and tmpfs but not, for example, for 9p or an overlay as a lower layer;
:func:`probe` tells at start whether the depot's filesystem can be.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Ids in one container's block (its ids 0-65535, as Docker and Podman map them).
BLOCK = 65536
#: How ``/proc/PID/uid_map`` reads for the host's own ids.
HOST_COUNT = 2**32 - 1


@dataclass(frozen=True)
class IdMap:
    """Container ids ``0..count-1`` are host ids ``first..first+count-1``."""

    first: int
    count: int

    @property
    def own(self) -> bool:
        """A block of its own, not the host's ids."""
        return self.count != HOST_COUNT

    def spec_fields(self) -> tuple[str, str]:
        return str(self.first), str(self.count)


HOST_IDS = IdMap(0, HOST_COUNT)


class IdBlocks:
    """Hands out blocks of :data:`BLOCK` host ids from *first_id* up, one per container."""

    def __init__(self, first_id: int, blocks: int) -> None:
        self.first_id = first_id
        self.blocks = blocks
        self._taken: set[int] = set()

    def take(self) -> IdMap:
        """The lowest free block.

        Raises:
            LookupError: every block is taken.
        """
        for index in range(self.blocks):
            if index not in self._taken:
                self._taken.add(index)
                return IdMap(self.first_id + index * BLOCK, BLOCK)
        raise LookupError(f"all {self.blocks} blocks of {BLOCK} host ids are taken")

    def claim(self, first: int) -> IdMap:
        """The block starting at host id *first*, recorded by a container being restored."""
        index = self._index(first)
        if index is None:
            raise ValueError(f"host id {first} starts no block of this daemon's range")
        self._taken.add(index)
        return IdMap(first, BLOCK)

    def give_back(self, ids: IdMap) -> None:
        """Free the block of *ids* (nothing for the host's ids, or a block of another range)."""
        index = self._index(ids.first) if ids.own else None
        if index is not None:
            self._taken.discard(index)

    def _index(self, first: int) -> int | None:
        """The index of the block starting at host id *first*; None if none does."""
        index, rest = divmod(first - self.first_id, BLOCK)
        return None if rest or not 0 <= index < self.blocks else index


def probe(init: Path, first_id: int, paths: list[Path]) -> str | None:
    """None if containers with ids of their own can be made here, with their ids mapped
    onto the files under each of *paths*; else why not (the init's message)."""
    result = subprocess.run(
        [str(init), "probe-ids", str(first_id), *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        return None
    return result.stderr.strip().removeprefix("corral-init: ") or f"exit {result.returncode}"

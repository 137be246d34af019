"""Address, port and name pools: pure bookkeeping, no system calls.

Every pool hands out slots next-fit (the slot after the last one handed out),
so a freed address or port is the last to come back; addresses also wait out a
*quarantine* after release, so that conntrack entries and neighbour caches that
still name an old container never reach a new one. Restored containers
:meth:`~SlotPool.reserve` their slots again at daemon start (``force``), which
is how the pools are rebuilt across restarts; quarantine is kept in memory
only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from supervisor.api import InvalidRequest, NoCapacity

Clock = Callable[[], float]

#: A container's own subnet out of the pool: host end .1, container .2 (as Warden did).
SUBNET_PREFIXLEN = 30


class SlotPool:
    """Integer slots ``0 .. size-1`` handed out next-fit, quarantined for a while after release.

    Args:
        name: what the pool holds, for error messages (``address pool 10.254.0.0/22``).
        size: number of slots.
        quarantine: seconds a released slot is not handed out again.
        clock: monotonic time source (tests pass a fake one).
    """

    def __init__(
        self, name: str, size: int, quarantine: float = 0.0, clock: Clock = time.monotonic
    ) -> None:
        if size <= 0:
            raise ValueError(f"{name}: a pool needs at least one slot")
        self.name = name
        self.size = size
        self.quarantine = quarantine
        self._clock = clock
        self._used: set[int] = set()
        self._released: dict[int, float] = {}
        self._next = 0

    def __contains__(self, slot: int) -> bool:
        return slot in self._used

    @property
    def used(self) -> int:
        """How many slots are handed out."""
        return len(self._used)

    def quarantined_for(self, slot: int) -> float:
        """Seconds *slot* still waits before it can be handed out again (0 when it can)."""
        released = self._released.get(slot)
        if released is None:
            return 0.0
        left = released + self.quarantine - self._clock()
        if left <= 0:
            del self._released[slot]
            return 0.0
        return left

    def allocate(self) -> int:
        """Hand out the next free slot.

        Raises:
            NoCapacity: every slot is in use or in quarantine.
        """
        for step in range(self.size):
            slot = (self._next + step) % self.size
            if slot not in self._used and not self.quarantined_for(slot):
                self._take(slot)
                return slot
        quarantined = sum(1 for s in list(self._released) if self.quarantined_for(s))
        waiting = f" for up to {self.quarantine:g} s after release" if quarantined else ""
        raise NoCapacity(
            f"{self.name} is exhausted ({len(self._used)} in use, {quarantined} in quarantine{waiting})"
        )

    def reserve(self, slot: int, what: str, force: bool = False) -> None:
        """Take a specific slot.

        Args:
            slot: the slot asked for.
            what: the thing the slot stands for, for error messages (``address 10.254.0.6``).
            force: take it even if it is in quarantine (restoring a container that held it).

        Raises:
            InvalidRequest: the slot is in use, or in quarantine and *force* is false.
        """
        if not 0 <= slot < self.size:
            raise InvalidRequest(f"{what} is outside the {self.name}")
        if slot in self._used:
            raise InvalidRequest(f"{what} is already in use")
        left = self.quarantined_for(slot)
        if left and not force:
            raise InvalidRequest(
                f"{what} was released recently and is in quarantine for {left:.1f} s more"
            )
        self._released.pop(slot, None)
        self._used.add(slot)

    def release(self, slot: int, quarantine: bool = True) -> None:
        """Give a slot back; it is quarantined before it is handed out again.

        Args:
            slot: the slot to give back.
            quarantine: false when the slot was never really used (a create that failed).
        """
        if slot in self._used:
            self._used.discard(slot)
            if quarantine and self.quarantine > 0:
                self._released[slot] = self._clock()

    def _take(self, slot: int) -> None:
        self._used.add(slot)
        self._next = (slot + 1) % self.size


@dataclass(frozen=True)
class Lease:
    """One container's address: the container end, its gateway (the host side) and the prefix length."""

    address: IPv4Address
    gateway: IPv4Address
    prefixlen: int

    @cached_property
    def texts(self) -> tuple[str, str]:
        """The gateway and the container address as text, formatted once: ``info`` shows
        them, and formatting an ``IPv4Address`` costs a few microseconds."""
        return str(self.gateway), str(self.address)

    @property
    def cidr(self) -> str:
        """The container address with its prefix length, as ``ip addr add`` takes it."""
        return f"{self.address}/{self.prefixlen}"

    @property
    def gateway_cidr(self) -> str:
        """The gateway address with the prefix length (the host end's address)."""
        return f"{self.gateway}/{self.prefixlen}"

    def to_json(self) -> dict[str, Any]:
        return {
            "address": str(self.address),
            "gateway": str(self.gateway),
            "prefixlen": self.prefixlen,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lease:
        return cls(IPv4Address(data["address"]), IPv4Address(data["gateway"]), data["prefixlen"])


class AddressPool:
    """Base of the two address pools: maps container addresses to slots of a :class:`SlotPool`."""

    network: IPv4Network
    slots: SlotPool

    def slot_of(self, address: IPv4Address) -> int:
        """The slot of a container address, or InvalidRequest naming why it cannot be one."""
        raise NotImplementedError

    def lease(self, slot: int) -> Lease:
        """The lease that *slot* stands for."""
        raise NotImplementedError

    def allocate(self) -> Lease:
        """The next free address (NoCapacity when none is left)."""
        return self.lease(self.slots.allocate())

    def reserve(self, address: IPv4Address, force: bool = False) -> Lease:
        """Take a specific container address (InvalidRequest naming it when it is not free)."""
        slot = self.slot_of(address)
        self.slots.reserve(slot, f"address {address}", force)
        return self.lease(slot)

    def release(self, lease: Lease, quarantine: bool = True) -> None:
        """Give an address back (into quarantine, unless *quarantine* is false)."""
        self.slots.release(self.slot_of(lease.address), quarantine)


class SubnetPool(AddressPool):
    """One /30 per container out of a larger network: the host end is .1, the container .2.

    The whole /30 is the container's, so containers of this pool cannot reach each
    other at layer 2; everything they send goes through the host's firewall.
    """

    def __init__(
        self, network: IPv4Network, quarantine: float = 0.0, clock: Clock = time.monotonic
    ) -> None:
        if network.prefixlen > SUBNET_PREFIXLEN:
            raise ValueError(f"address pool {network} is smaller than one /{SUBNET_PREFIXLEN}")
        self.network = network
        size = 1 << (SUBNET_PREFIXLEN - network.prefixlen)
        self.slots = SlotPool(f"address pool {network}", size, quarantine, clock)

    def slot_of(self, address: IPv4Address) -> int:
        if address not in self.network:
            raise InvalidRequest(f"address {address} is not in the address pool {self.network}")
        offset = int(address) - int(self.network.network_address)
        if offset % 4 != 2:
            container = IPv4Address(int(address) - offset % 4 + 2)
            raise InvalidRequest(
                f"address {address} cannot be a container's: each container has a "
                f"/{SUBNET_PREFIXLEN} whose .2 is the container (e.g. {container})"
            )
        return offset // 4

    def lease(self, slot: int) -> Lease:
        base = int(self.network.network_address) + 4 * slot
        return Lease(IPv4Address(base + 2), IPv4Address(base + 1), SUBNET_PREFIXLEN)


class BridgePool(AddressPool):
    """Addresses of one shared bridge subnet: the bridge has the gateway address (the first
    host address unless *gateway* says another), containers the others, in order."""

    def __init__(
        self,
        name: str,
        network: IPv4Network,
        quarantine: float = 0.0,
        clock: Clock = time.monotonic,
        gateway: IPv4Address | None = None,
    ) -> None:
        if network.num_addresses < 4:
            raise ValueError(f"bridge {name}: subnet {network} has no room for containers")
        self.name = name
        self.network = network
        first = int(network.network_address)
        self.gateway = IPv4Address(first + 1) if gateway is None else gateway
        if not first < int(self.gateway) < int(network.broadcast_address):
            raise ValueError(
                f"bridge {name}: gateway {self.gateway} is no host address of {network}"
            )
        #: Index of the gateway among the host addresses: slots skip it.
        self._gateway_index = int(self.gateway) - first - 1
        # network, gateway and broadcast addresses are never a container's
        size = network.num_addresses - 3
        self.slots = SlotPool(f"address pool of bridge {name} ({network})", size, quarantine, clock)

    def slot_of(self, address: IPv4Address) -> int:
        if address not in self.network:
            raise InvalidRequest(
                f"address {address} is not in bridge {self.name}'s subnet {self.network}"
            )
        if address == self.gateway:
            raise InvalidRequest(f"address {address} is bridge {self.name}'s own (the gateway)")
        if address in (self.network.network_address, self.network.broadcast_address):
            raise InvalidRequest(f"address {address} is not a host address of {self.network}")
        index = int(address) - int(self.network.network_address) - 1
        return index if index < self._gateway_index else index - 1

    def lease(self, slot: int) -> Lease:
        index = slot if slot < self._gateway_index else slot + 1
        address = IPv4Address(int(self.network.network_address) + 1 + index)
        return Lease(address, self.gateway, self.network.prefixlen)


class PortPool:
    """Host ports for ``net in``: automatic ones from a range, explicit ones anywhere.

    A port forwarded once cannot be forwarded again until its container is destroyed.
    """

    def __init__(self, first: int, last: int) -> None:
        self.first = first
        self.last = last
        self._range = SlotPool(f"port range {first}-{last}", last - first + 1)
        self._taken: set[int] = set()

    def __contains__(self, port: int) -> bool:
        return port in self._taken

    def allocate(self) -> int:
        """The next free port of the range (NoCapacity when every one is taken)."""
        port = self.first + self._range.allocate()
        self._taken.add(port)
        return port

    def reserve(self, port: int, force: bool = False) -> None:
        """Take a specific port (InvalidRequest if it is already forwarded)."""
        if port in self._taken and not force:
            raise InvalidRequest(f"host port {port} is already forwarded")
        if self.first <= port <= self.last and port not in self._taken:
            self._range.reserve(port - self.first, f"host port {port}", force=True)
        self._taken.add(port)

    def release(self, port: int) -> None:
        """Give a port back."""
        if port in self._taken:
            self._taken.discard(port)
            if self.first <= port <= self.last:
                self._range.release(port - self.first)

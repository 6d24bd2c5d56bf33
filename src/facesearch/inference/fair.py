"""Scheduling helpers of the model pool: a per-tenant queue served round robin, and the memory of
photos that stopped a worker.

Both are plain data structures, not thread-safe on their own: the pool guards them with its lock.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Tasks waiting for a worker, one FIFO queue per tenant (a domain), served round robin: each
    pick takes the next tenant's oldest task. So a tenant's backlog delays another tenant's task by
    at most the tasks already running. A tenant with nothing waiting goes to the front when its
    task arrives: it is served by the next free worker."""

    def __init__(self) -> None:
        self._queues: OrderedDict[str, deque[T]] = OrderedDict()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def waiting(self, tenant: str) -> int:
        """Tasks of ``tenant`` waiting."""
        queue = self._queues.get(tenant)
        return len(queue) if queue else 0

    def tenants(self) -> int:
        """Tenants with tasks waiting."""
        return len(self._queues)

    def extend(self, tenant: str, items: Iterable[T]) -> None:
        items = list(items)
        if not items:
            return
        queue = self._queues.get(tenant)
        if queue is None:
            queue = self._queues[tenant] = deque()
            self._queues.move_to_end(tenant, last=False)
        queue.extend(items)
        self._len += len(items)

    def popleft(self) -> T:
        """The next tenant's oldest task (IndexError if nothing waits); the tenant then goes to
        the back of the rotation."""
        if not self._queues:
            raise IndexError("pop from an empty FairQueue")
        tenant, queue = next(iter(self._queues.items()))
        item = queue.popleft()
        self._len -= 1
        if queue:
            self._queues.move_to_end(tenant)
        else:
            del self._queues[tenant]
        return item

    def drain(self) -> list[T]:
        """Remove and return every task waiting."""
        items = [item for queue in self._queues.values() for item in queue]
        self._queues.clear()
        self._len = 0
        return items


class Strikes:
    """How many times each recent photo stopped a worker (killed it, or ran past the timeout),
    keyed by a digest of its bytes; the oldest are forgotten beyond ``size`` photos."""

    def __init__(self, size: int = 4096) -> None:
        self._counts: OrderedDict[bytes, int] = OrderedDict()
        self._size = size

    @staticmethod
    def key(photos: Iterable[bytes]) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for data in photos:
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.digest()

    def count(self, key: bytes | None) -> int:
        return self._counts.get(key, 0) if key is not None else 0

    def add(self, key: bytes | None) -> int:
        """One more strike for ``key``; returns its count."""
        if key is None:
            return 0
        count = self._counts.pop(key, 0) + 1
        self._counts[key] = count
        while len(self._counts) > self._size:
            self._counts.popitem(last=False)
        return count

    def clear(self, key: bytes | None) -> None:
        """The photo was analysed: whatever stopped the workers before was not the photo."""
        if key is not None:
            self._counts.pop(key, None)

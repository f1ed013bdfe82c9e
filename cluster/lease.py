"""One writer per run: the driver holds `{run}/lease.json` while it trains the run.

The lease names its holder (host, pid, start time) and the time of its last heartbeat. The driver renews
it every `heartbeat_seconds` from a thread; a lease whose heartbeat is `heartbeat_seconds x
MISSED_HEARTBEATS` old is expired (its holder crashed or was killed), and the next driver takes the run
over by itself. `--take-over` takes a live-looking lease at once, for a holder known to be gone.

Every write of the lease is conditioned on the version last read (`storage.write_if_unchanged`: S3's
If-None-Match / If-Match where the store has them), so of two drivers only one gets the run, and a driver
whose run was taken over finds out at its next heartbeat and stops. Expiry compares the holder's clock
with the reader's: clocks apart by more than the expiry time would misjudge it.
"""

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from dataloading import storage

LEASE_FILE = "lease.json"
HEARTBEAT_SECONDS = 30.0
MISSED_HEARTBEATS = 4  # a lease this many heartbeats old is expired
TAKE_OVER_ATTEMPTS = 3


@dataclass(frozen=True)
class Holder:
    """Who holds a run, as written in its lease."""

    host: str
    pid: int
    started: float  # epoch seconds
    heartbeat: float  # epoch seconds of the last renewal
    expires_seconds: float  # after the last heartbeat
    token: str  # this holder's own, unique

    def age(self, now: float) -> float:
        return now - self.heartbeat

    def expired(self, now: float) -> bool:
        return self.age(now) > self.expires_seconds

    def gone(self) -> bool:
        """Whether this holder is a process of this host that no longer runs (killed before it could release
        the lease), or this very process's pid (a restarted container reusing it): its lease is free."""
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # a live process of another user
            return False
        return False

    def describe(self, now: float) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started))
        return (f"host {self.host}, pid {self.pid}, started {started}, last heartbeat {self.age(now):.0f} s ago "
                f"(it expires {self.expires_seconds:g} s after that)")


class RunHeld(Exception):
    """Another driver holds the run."""


class RunLease:
    """The lease of the run at `run_url`: `acquire()`, then `start_heartbeat(on_lost)`, then `release()`."""

    def __init__(self, run_url: str, *, heartbeat_seconds: float = HEARTBEAT_SECONDS, clock=time.time):
        self.url = storage.join(run_url, LEASE_FILE)
        self.run_url = run_url
        self.heartbeat_seconds = heartbeat_seconds
        self.clock = clock
        self.holder: Holder | None = None  # ours, once acquired
        self.version: str | None = None
        self.lost = False  # another driver took the run over
        self.lost_to: Holder | None = None  # that driver, when its lease is still there
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> tuple[Holder, str] | None:
        """The lease's holder and version, or None when nobody holds the run."""
        current = storage.read_versioned(self.url)
        if current is None:
            return None
        return Holder(**json.loads(current[0])), current[1]

    def acquire(self, *, take_over: bool = False, log=print) -> None:
        """Hold the run, taking over an expired lease (or any, with `take_over`); RunHeld when another
        driver holds it, naming that driver and the ways out."""
        storage.makedirs(self.run_url)
        for _ in range(TAKE_OVER_ATTEMPTS if take_over else 1):  # a live holder may renew in between
            try:
                return self._acquire_once(take_over=take_over, log=log)
            except storage.VersionMismatch:
                pass
        winner = self.read()
        raise RunHeld(self.held_message(winner[0], self.clock()) if winner else
                      f"{self.run_url}: another driver took and released the run while this one started; "
                      f"run the command again")

    def _acquire_once(self, *, take_over: bool, log) -> None:
        now = self.clock()
        current = self.read()
        if current is not None:
            other = current[0]
            reason = ("its lease expired" if other.expired(now) else
                      "its process is gone from this host" if other.gone() else
                      "--take-over" if take_over else None)
            if reason is None:
                raise RunHeld(self.held_message(other, now))
            log(f"taking {self.run_url} over from {other.describe(now)}: {reason}")
        mine = Holder(host=socket.gethostname(), pid=os.getpid(), started=now, heartbeat=now,
                      expires_seconds=self.heartbeat_seconds * MISSED_HEARTBEATS, token=uuid.uuid4().hex)
        self.version = storage.write_if_unchanged(self.url, encode(mine), current and current[1])
        self.holder = mine

    def held_message(self, other: Holder, now: float) -> str:
        return (f"{self.run_url} is being trained by another eg3d.train ({other.describe(now)}; lease {self.url}). "
                f"Wait for it to finish or stop it, or train under another --name; if that process is gone, its "
                f"lease expires by itself, or rerun this command with --take-over to take the run over now")

    def renew(self) -> bool:
        """One heartbeat; False (and `lost` set) when another driver holds the run now."""
        renewed = Holder(**{**asdict(self.holder), "heartbeat": self.clock()})
        try:
            self.version = storage.write_if_unchanged(self.url, encode(renewed), self.version)
        except storage.VersionMismatch:
            current = self.read()
            self.lost, self.lost_to = True, current[0] if current else None
            return False
        self.holder = renewed
        return True

    def start_heartbeat(self, on_lost) -> None:
        """Renew from a daemon thread every heartbeat_seconds; call `on_lost()` once if the run is taken."""
        def beat():
            while not self._stop.wait(self.heartbeat_seconds):
                try:
                    if not self.renew():
                        on_lost()
                        return
                except Exception as error:  # a store that is down for a while: try again next beat
                    logging.getLogger("eg3d").warning(f"could not renew the lease {self.url}: {error}")

        self._thread = threading.Thread(target=beat, name="run-lease-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the lease, if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self.read() if self.holder is not None else None
        if current is not None and current[0].token == self.holder.token:
            storage.delete(self.url)
        self.holder = None

    def lost_message(self) -> str:
        other = self.lost_to.describe(self.clock()) if self.lost_to else "a driver that released it since"
        return (f"{self.run_url} was taken over by another eg3d.train ({other}); this driver stopped its workers "
                f"so that the run has one writer")


def encode(holder: Holder) -> bytes:
    return json.dumps(asdict(holder), indent=2).encode()

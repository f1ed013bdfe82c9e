"""SIGTERM for the driver: `kill`, `timeout`, `docker stop` and a Kubernetes pod's deletion stop a run as Ctrl-C
does (eg3d.train says which checkpoint resumes it and exits 143)."""

import os
import signal
import threading


class Terminated:
    """Whether the driver was sent SIGTERM (`stop_on_sigterm`)."""
    received = False


def stop_on_sigterm() -> None:
    """SIGTERM (`kill`, `timeout`, `docker stop`, a Kubernetes pod's deletion) stops the run as Ctrl-C does: it
    calls the SIGINT handler in place at that moment (Ray Train's graceful abort while the workers run) or
    raises KeyboardInterrupt, and `Terminated.received` tells the driver which signal it was. Called at start
    and again after ray.init, whose native failure-signal handler takes SIGTERM over (a stack dump, then an
    abort with status 134). Only the main thread can set handlers; elsewhere this does nothing."""
    owner = os.getpid()

    def on_sigterm(signum, frame):
        if os.getpid() != owner:  # a forked child (a multiprocessing pool's worker): end as SIGTERM ends it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        Terminated.received = True
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
        _Forks.reset_in_children()


class _Forks:
    """A forked child (a process pool's worker, which `terminate()` sends SIGTERM) gets SIGTERM's default back
    at once: a Python handler runs only between bytecodes of the main thread, which a child can be far from."""
    registered = False

    @classmethod
    def reset_in_children(cls) -> None:
        if not cls.registered:
            os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
            cls.registered = True

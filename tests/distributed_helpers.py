"""Run a function on N local worker processes joined by a real gloo process group (no Ray needed).

    results = run_on_workers(fn, world_size=2, args=(...))   # fn(rank, *args) -> picklable; [result per rank]
"""

import faulthandler
import os
import pickle
import socket
import sys
import tempfile

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    faulthandler.enable()
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = fn(rank, *args)
        with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as file:
            pickle.dump(result, file)
        # Every rank waits for all before tearing down: two-rank DeepSpeed runs aborted now and then
        # ("terminate called without an active exception", SIGABRT; about 1 in 10 runs of a test) without
        # it and none did in 55 repetitions with it. The cause is not pinned down; faulthandler prints the
        # Python stack should a worker still die of a signal.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # The result is written: leave without the interpreter's teardown. A ddp worker that had finished and
    # written its result still aborted once at exit ("terminate called without an active exception", no
    # Python frame: a native thread destroyed during teardown), which fails the test for nothing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_on_workers(fn, world_size: int, args: tuple = ()) -> list:
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world_size, free_port(), out_dir, fn, args), nprocs=world_size, join=True)
        results = []
        for rank in range(world_size):
            with open(os.path.join(out_dir, f"{rank}.pkl"), "rb") as file:
                results.append(pickle.load(file))
        return results

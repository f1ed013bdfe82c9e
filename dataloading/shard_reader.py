"""The training data reader: a shard manifest (from `python -m dataloading.build`) -> endless batches.

    reader = ShardReader("s3://bucket/ffhq/manifest.json", rank=r, world_size=w, seed=0, batch_size=8)
    batch = next(reader)  # {"image": float32 [B,3,R,R] in [-1,1] on device, "c": float32 [B,25],
    #          "index": int64 [B] manifest indices (CPU), for checks and debugging}

What each rank reads, and in which order, is decided by an `EpochPlan` that depends only on the
manifest, (seed, epoch), rank, world size and the shuffle buffer size, never on the backend. The
plan of an epoch:
- Shards are permuted by (seed, epoch); rank r takes every world_size-th one from position r, so the
  ranks are disjoint and together cover the epoch. With fewer shards than ranks, every rank reads every
  shard and keeps the samples whose manifest index is r modulo world_size instead. Epochs of different
  ranks may differ by a shard in length; each rank simply starts its next epoch (training counts images).
- The rank's samples, in shard order, pass through a shuffle buffer seeded by (seed, epoch, rank).
- Each sample is flipped (with its camera mirrored) by a coin drawn from (seed, epoch, sample index).
Because the delivered order is computed from indices, a resume at (epoch, samples consumed) is exact:
it re-reads from the earliest shard that still holds an undelivered sample and drops what was already
delivered, so nothing is repeated or skipped. A different world size on resume starts the next epoch.

The "pytorch" backend streams each shard through `storage` (local or s3://), checks its size and
sha256, and decodes with PIL in a few threads while a background thread prefetches batches. The "dali"
backend (listed in BACKENDS only when NVIDIA DALI is installed: the `dali` extra) consumes the same plan
through the same producer thread and shard reading, but decodes in a DALI pipeline (`fn.external_source`
fed the planned samples' bytes, `fn.decoders.image` "mixed" on GPU or "cpu", `fn.decoders.numpy`, flips
from the plan); see `dataloading.dali_backend`. One seed gives one sample order, and the same batches, on both.
Both read only the image and camera members: a sample's ground truth (depth, class; the manifest's
"ground_truth" says which) is for evaluators, which decode it with `decode_ground_truth`.
"""

import functools
import hashlib
import importlib.util
import io
import json
import queue
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from eg3d.networks.camera import mirror_label

from . import storage
from .build import LABELS, MANIFEST_FORMAT, load_depth
from .reference_format import LABEL_SIZE


def _dali_installed() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ImportError:  # no `nvidia` package at all
        return False


BACKENDS = ("pytorch", "dali") if _dali_installed() else ("pytorch",)


# --- the manifest --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    url: str
    size: int
    sample_count: int
    sha256: str
    first_index: int  # manifest index of its first sample


@dataclass(frozen=True)
class Manifest:
    url: str
    sample_count: int
    resolution: int
    image_extension: str
    shards: tuple[Shard, ...]
    has_depth: bool = False  # every sample has a depth member (`decode_ground_truth`)
    class_names: tuple[str, ...] | None = None  # every sample has a class member indexing these


def load_manifest(url: str) -> Manifest:
    """The manifest at `url`, checked; errors name the URL and the field."""
    url = str(url)
    try:
        raw = json.loads(storage.read_bytes(url))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{url}: not valid JSON ({error})") from error
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{url}: not a shard manifest (expected \"format\": \"{MANIFEST_FORMAT}\"); "
                         f"build one with python -m dataloading.build")
    if raw.get("label_dim") != LABEL_SIZE:
        raise ValueError(f"{url}: label_dim is {raw.get('label_dim')}, expected {LABEL_SIZE}")
    shards, first = [], 0
    for position, entry in enumerate(raw.get("shards") or []):
        try:
            shard = Shard(storage.join(storage.parent(url), entry["name"]), int(entry["size"]),
                          int(entry["sample_count"]), str(entry["sha256"]), first)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{url}: shards[{position}] lacks a valid name, size, sample_count or "
                             f"sha256 ({error!r})") from error
        shards.append(shard)
        first += shard.sample_count
    if not shards or first != raw.get("sample_count"):
        raise ValueError(f"{url}: sample_count is {raw.get('sample_count')} but the {len(shards)} shards hold "
                         f"{first} samples")
    has_depth, class_names = _ground_truth(url, raw.get("ground_truth"))
    return Manifest(url, first, int(raw["resolution"]), str(raw["image_extension"]), tuple(shards), has_depth,
                    class_names)


def _ground_truth(url: str, entry) -> tuple[bool, tuple[str, ...] | None]:
    """(has_depth, class_names) of a manifest's "ground_truth"; (False, None) for one built before it existed."""
    if entry is None:
        return False, None
    class_names = entry.get("class_names") if isinstance(entry, dict) else None
    if not (isinstance(entry, dict) and isinstance(entry.get("depth"), bool) and (
            class_names is None or isinstance(class_names, list) and all(isinstance(x, str) for x in class_names))):
        raise ValueError(f'{url}: ground_truth is {str(entry)[:80]}, expected {{"depth": true or false, '
                         f'"class_names": [names] or null}}')
    return entry["depth"], None if class_names is None else tuple(class_names)


def camera_labels(manifest_url: str) -> np.ndarray:
    """float32 [N,25] camera labels in manifest order (for the generator's camera sampler)."""
    manifest = load_manifest(manifest_url)
    url = storage.join(storage.parent(manifest.url), LABELS)
    labels = np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False)
    if labels.shape != (manifest.sample_count, LABEL_SIZE):
        raise ValueError(f"{url}: labels have shape {labels.shape}, expected ({manifest.sample_count}, {LABEL_SIZE})")
    return labels.astype(np.float32, copy=False)


def verify(manifest_url: str) -> None:
    """Read every shard in full: its size, sha256 and sample count must match the manifest."""
    manifest = load_manifest(manifest_url)
    for shard in manifest.shards:
        for _ in read_shard(shard):
            pass


class _HashingReader:
    """A file wrapper that hashes every byte read through it."""

    def __init__(self, file):
        self.file, self.digest, self.count = file, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.digest.update(data)
        self.count += len(data)
        return data


def read_shard(shard: Shard):
    """(manifest index, {extension: bytes}) of each sample in a shard, in order; the shard's size is
    checked on opening and its sha256 once it has been read to the end."""
    with storage.open_read(shard.url) as file:
        size = file.size if hasattr(file, "size") else storage.size(shard.url)
        if size != shard.size:
            raise ValueError(f"{shard.url}: shard is {size} bytes, the manifest says {shard.size} "
                             f"(truncated or replaced); rebuild it with python -m dataloading.build")
        hashing = _HashingReader(file)
        count = 0
        try:
            for members in _samples(tarfile.open(fileobj=hashing, mode="r|")):
                yield shard.first_index + count, members
                count += 1
        except (tarfile.TarError, EOFError, OSError) as error:
            raise ValueError(f"{shard.url}: unreadable tar ({error}); rebuild it") from error
        while hashing.read(1 << 20):
            pass
    if hashing.digest.hexdigest() != shard.sha256 or count != shard.sample_count:
        raise ValueError(f"{shard.url}: sha256 or sample count differs from the manifest ({count} samples, "
                         f"expected {shard.sample_count}); the shard is corrupt, rebuild it")


def _samples(tar: tarfile.TarFile):
    """Members grouped by key (the name up to the first dot) -> {extension: bytes}."""
    key, members = None, {}
    for info in tar:
        if not info.isfile():
            continue
        member_key, extension = info.name.split(".", 1)
        if member_key != key and members:
            yield members
            members = {}
        key = member_key
        members[extension] = tar.extractfile(info).read()
    if members:
        yield members


# --- the plan ------------------------------------------------------------------------------------------

class EpochPlan:
    """Which samples rank `rank` reads in `epoch`, in read order (`inputs`), which shards hold them
    (`shard_order`), and the order the shuffle buffer delivers them in (`outputs`)."""

    def __init__(self, manifest: Manifest, *, rank: int, world_size: int, seed: int, epoch: int,
                 shuffle_buffer: int):
        counts = np.array([shard.sample_count for shard in manifest.shards])
        shard_order = np.random.default_rng([seed, epoch]).permutation(len(counts))
        self.by_samples = len(counts) < world_size  # documented fallback: split samples, not shards
        self.shard_order = shard_order if self.by_samples else shard_order[rank::world_size]
        firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        inputs = np.concatenate([np.arange(firsts[s], firsts[s] + counts[s]) for s in self.shard_order]
                                or [np.zeros(0, dtype=np.int64)]).astype(np.int64)
        self.keep = (lambda index: index % world_size == rank) if self.by_samples else (lambda index: True)
        self.inputs = inputs[inputs % world_size == rank] if self.by_samples else inputs
        self.input_position = np.full(manifest.sample_count, -1, dtype=np.int64)  # by manifest index
        self.input_position[self.inputs] = np.arange(len(self.inputs))
        self.outputs = shuffle_order(self.inputs, shuffle_buffer, np.random.default_rng([seed, epoch, rank]))
        self.flips = np.random.default_rng([seed, epoch, 1 << 20]).random(manifest.sample_count) < 0.5

    def __len__(self) -> int:
        return len(self.outputs)


def shuffle_order(inputs: np.ndarray, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """The order a shuffle buffer of `buffer_size` delivers `inputs` in: fill it, then each new input
    replaces a uniformly drawn slot whose sample is delivered; at the end the rest leave in random order."""
    if buffer_size <= 1 or len(inputs) <= 1:
        return inputs.copy()
    slots = rng.integers(0, buffer_size, size=max(len(inputs) - buffer_size, 0))
    buffer, outputs = list(inputs[:buffer_size]), []
    for incoming, slot in zip(inputs[buffer_size:], slots):
        outputs.append(buffer[slot])
        buffer[slot] = incoming
    outputs.extend(rng.permutation(np.array(buffer)))
    return np.array(outputs, dtype=np.int64)


# --- the reader ----------------------------------------------------------------------------------------

class ShardReader:
    """Endless batches for one rank; `state_dict()` after a batch resumes right after it."""

    def __init__(self, manifest_url: str, *, rank: int = 0, world_size: int = 1, seed: int = 0, batch_size: int,
                 device: torch.device | str = "cpu", xflip: bool = False, shuffle_buffer: int = 256,
                 backend: str = "pytorch", decode_threads: int = 2, prefetch_batches: int = 2):
        self._producer: _Producer | None = None
        if backend == "dali" and backend not in BACKENDS:
            raise ValueError("backend 'dali' needs NVIDIA DALI, which is not installed; install the `dali` "
                             "extra (pip install -e .[dali])")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        if not 0 <= rank < world_size or batch_size < 1:
            raise ValueError(f"need 0 <= rank < world_size and batch_size >= 1, got rank={rank}, "
                             f"world_size={world_size}, batch_size={batch_size}")
        self.manifest = load_manifest(manifest_url)
        if self.manifest.sample_count < world_size:
            raise ValueError(f"{manifest_url}: {self.manifest.sample_count} samples cannot feed {world_size} ranks")
        self.rank, self.world_size, self.seed, self.batch_size = rank, world_size, seed, batch_size
        self.device, self.xflip, self.shuffle_buffer = torch.device(device), xflip, shuffle_buffer
        self.decode_threads, self.prefetch_batches = decode_threads, prefetch_batches
        self.epoch, self.position = 0, 0  # of the next sample to deliver

    @property
    def resolution(self) -> int:
        return self.manifest.resolution

    def plan(self, epoch: int) -> EpochPlan:
        return self._plans()(epoch=epoch)

    def _plans(self):
        """EpochPlan(epoch=...) for this rank; a partial, so the producer thread need not hold the reader."""
        return functools.partial(EpochPlan, self.manifest, rank=self.rank, world_size=self.world_size,
                                 seed=self.seed, shuffle_buffer=self.shuffle_buffer)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._producer is None:
            if self.backend == "dali":
                from .dali_backend import DaliProducer

                self._producer = DaliProducer(self, self.epoch, self.position)
            else:
                self._producer = _Producer(self, self.epoch, self.position)
        images, cameras, indices, (self.epoch, self.position) = self._producer.next()
        return {"image": images.to(self.device, torch.float32) / 127.5 - 1,
                "c": cameras.to(self.device), "index": indices}

    @staticmethod
    def raw_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
        """`image_raw`: the batch resized (antialiased bilinear) to the neural rendering resolution."""
        from eg3d.networks.layers import resize

        return images if images.shape[-1] == resolution else resize(images, resolution)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.seed = state["seed"]
        if state["world_size"] == self.world_size:
            self.epoch, self.position = state["epoch"], state["position"]
        else:  # the per-rank positions of another world size do not map onto this one
            self.epoch, self.position = state["epoch"] + (state["position"] > 0), 0

    def close(self) -> None:
        if self._producer is not None:
            self._producer.stop()
            self._producer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __del__(self):
        self.close()


class _Producer:
    """A thread that reads, decodes and batches ahead of the consumer. It holds no reference to the
    reader, so a reader that is dropped without close() is collected and stops it."""

    def __init__(self, reader: ShardReader, epoch: int, position: int):
        self.manifest, self.batch_size = reader.manifest, reader.batch_size
        self.plan = reader._plans()
        self.xflip, self.decode_threads = reader.xflip, reader.decode_threads
        self.queue = queue.Queue(maxsize=max(1, reader.prefetch_batches))
        self.stopping, self.failure = threading.Event(), None
        self.thread = threading.Thread(target=self._run, args=(epoch, position), daemon=True, name="shard-reader")
        self.thread.start()

    def next(self):
        if self.failure is None:
            item = self.queue.get()
            if not isinstance(item, BaseException):
                return item
            self.failure = item
        raise self.failure

    def stop(self) -> None:
        self.stopping.set()
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self.thread.join()

    def _put(self, item) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _run(self, epoch: int, position: int) -> None:
        samples = self._samples(epoch, position)
        try:
            with ThreadPoolExecutor(max(1, self.decode_threads)) as pool:
                while not self.stopping.is_set():
                    chunk = [next(samples) for _ in range(self.batch_size)]
                    if not self._put(self._batch(pool, chunk)):
                        return
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(error)
        finally:
            samples.close()  # closes the open shard

    def _samples(self, epoch: int, position: int):
        """(epoch, position, plan, manifest index, members) in delivery order, across epochs."""
        while True:
            plan = self.plan(epoch=epoch)
            for sample_position, index, members in _planned_samples(self.manifest, plan, position):
                yield epoch, sample_position, plan, index, members
            epoch, position = epoch + 1, 0

    def _batch(self, pool: ThreadPoolExecutor, chunk):
        decoded = list(pool.map(lambda sample: decode_sample(self.manifest, sample[3], sample[4]), chunk))
        images = np.stack([image for image, _ in decoded])
        cameras = torch.from_numpy(np.stack([camera for _, camera in decoded]))
        indices = torch.tensor([sample[3] for sample in chunk], dtype=torch.int64)
        if self.xflip:
            flips = np.array([plan.flips[index] for _, _, plan, index, _ in chunk])
            images[flips] = images[flips, :, ::-1]
            cameras[torch.from_numpy(flips)] = mirror_label(cameras[torch.from_numpy(flips)])
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        epoch, position, plan = chunk[-1][:3]
        after = (epoch + 1, 0) if position + 1 == len(plan) else (epoch, position + 1)
        return images, cameras, indices, after


def _planned_samples(manifest: Manifest, plan: EpochPlan, start: int):
    """(position, manifest index, members) of plan.outputs[start:], reading shards from the earliest one
    that holds a sample still to deliver and keeping only those."""
    wanted = plan.outputs[start:]
    if not len(wanted):
        return
    first_input = int(plan.input_position[wanted].min())
    first_shard = _shard_of(manifest, int(plan.inputs[first_input]))
    shard_order = list(plan.shard_order)
    pending, wanted_set = {}, set(wanted.tolist())
    stream = (sample for s in shard_order[shard_order.index(first_shard):]
              for sample in read_shard(manifest.shards[s]) if plan.keep(sample[0]))
    for position, index in enumerate(wanted.tolist(), start):
        while index not in pending:
            read_index, members = next(stream)
            if read_index in wanted_set:
                pending[read_index] = members
        yield position, index, pending.pop(index)
    for _ in stream:  # finish the last shard so that its sha256 is checked
        pass


def _shard_of(manifest: Manifest, index: int) -> int:
    firsts = [shard.first_index for shard in manifest.shards]
    return int(np.searchsorted(firsts, index, side="right") - 1)


def decode_sample(manifest: Manifest, index: int, members: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [R,R,3] image and float32 [25] camera of one sample; errors name the sample."""
    where = f"{manifest.url}: sample {index}"
    try:
        with Image.open(io.BytesIO(members[manifest.image_extension])) as image:
            pixels = np.asarray(image.convert("RGB"))
        camera = np.load(io.BytesIO(members["cam.npy"]), allow_pickle=False)
    except KeyError as error:
        raise ValueError(f"{where}: no {error.args[0]} member in its shard") from error
    except (OSError, ValueError) as error:
        raise ValueError(f"{where}: cannot decode ({error})") from error
    resolution = manifest.resolution
    if pixels.shape != (resolution, resolution, 3) or camera.shape != (LABEL_SIZE,):
        raise ValueError(f"{where}: image {pixels.shape} and camera {camera.shape}, expected "
                         f"({resolution}, {resolution}, 3) and ({LABEL_SIZE},)")
    return pixels, camera.astype(np.float32, copy=False)


def decode_ground_truth(manifest: Manifest, index: int,
                        members: dict[str, bytes]) -> tuple[np.ndarray | None, int | None]:
    """(float32 [R,R] depth along each pixel's ray, NaN on the background; class index into
    manifest.class_names) of one sample, each None where the sample has none; errors name the sample.
    The training readers never call this: they read only the image and camera members."""
    where = f"{manifest.url}: sample {index}"
    depth = class_index = None
    if manifest.has_depth and "depth.npy" not in members:
        raise ValueError(f"{where}: no depth.npy member in its shard, though the manifest says every sample has one")
    if "depth.npy" in members:
        try:
            depth = load_depth(members["depth.npy"], manifest.resolution).astype(np.float32)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    if manifest.class_names is not None:
        if "cls" not in members:
            raise ValueError(f"{where}: no cls member in its shard, though the manifest has class_names")
        text = members["cls"]
        if not text.isdigit() or int(text) >= len(manifest.class_names):
            raise ValueError(f"{where}: class member is {text[:20]!r}, expected a decimal index below "
                             f"{len(manifest.class_names)} (the manifest's class_names)")
        class_index = int(text)
    return depth, class_index

"""The "dali" backend of ShardReader: the same EpochPlan, decoded by an NVIDIA DALI pipeline.

Only `dataloading.shard_reader` imports this module, and only when backend="dali" is asked for; install
DALI with the `dali` extra (`pip install -e .[dali]`). The producer thread, the plan, the shard reading
(size and sha256 checks) and the resume state are the pytorch backend's; only the decoding differs:
the planned samples' bytes go into `fn.external_source`, images are decoded by `fn.decoders.image`
(device "mixed", i.e. nvJPEG, when the reader's device is a GPU, "cpu" with `device_id=None` otherwise),
flipped by `fn.flip` with the plan's coins, and cameras by `fn.decoders.numpy`. Camera mirroring stays in
torch (`mirror_label`), so a seed gives the same batches, bit for bit for lossless images, on both backends.
"""

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types

from eg3d.networks.camera import mirror_label

from .reference_format import LABEL_SIZE
from .shard_reader import _Producer

_INPUTS = ("encoded", "camera", "flip")


@pipeline_def
def _decode_pipeline(decoder_device: str):
    encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
    camera = fn.external_source(name="camera", dtype=types.UINT8, ndim=1)
    flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
    images = fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB)
    images = fn.flip(images, horizontal=flip)
    return images, fn.decoders.numpy(camera)


class DaliProducer(_Producer):
    """_Producer whose batches are decoded by DALI; the pipeline is built in the producer thread."""

    def __init__(self, reader, epoch: int, position: int):
        self.device = reader.device
        self.gpu = reader.device.type == "cuda"
        self.pipeline = None
        super().__init__(reader, epoch, position)

    def _build(self):
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if self.gpu else None
        pipeline = _decode_pipeline("mixed" if self.gpu else "cpu", batch_size=self.batch_size,
                                    num_threads=max(1, self.decode_threads), device_id=device_id,
                                    exec_pipelined=False, exec_async=False, prefetch_queue_depth=1)
        pipeline.build()
        return pipeline

    def _batch(self, pool, chunk):
        if self.pipeline is None:
            self.pipeline = self._build()
        extension = self.manifest.image_extension
        encoded, cameras = [], []
        for _, _, _, index, members in chunk:
            missing = [name for name in (extension, "cam.npy") if name not in members]
            if missing:
                raise ValueError(f"{self.manifest.url}: sample {index}: no {missing[0]} member in its shard")
            encoded.append(np.frombuffer(members[extension], dtype=np.uint8))
            cameras.append(np.frombuffer(members["cam.npy"], dtype=np.uint8))
        flips = np.array([bool(self.xflip and plan.flips[index]) for _, _, plan, index, _ in chunk])
        for name, data in zip(_INPUTS, (encoded, cameras, [np.int32(flip) for flip in flips])):
            self.pipeline.feed_input(name, data)
        try:
            images, decoded_cameras = self.pipeline.run()
        except RuntimeError as error:
            indices = [sample[3] for sample in chunk]
            raise ValueError(f"{self.manifest.url}: samples {indices}: cannot decode ({error})") from error
        if not images.is_dense_tensor():
            raise ValueError(f"{self.manifest.url}: samples {[sample[3] for sample in chunk]}: images of "
                             f"different shapes {[images.at(i).shape() for i in range(len(chunk))]}")
        images = self._to_torch(images)
        cameras = torch.from_numpy(np.stack([np.asarray(decoded_cameras.at(i)) for i in range(len(chunk))]))
        resolution = self.manifest.resolution
        if tuple(images.shape[1:]) != (resolution, resolution, 3) or tuple(cameras.shape[1:]) != (LABEL_SIZE,):
            raise ValueError(f"{self.manifest.url}: samples {[sample[3] for sample in chunk]}: images "
                             f"{tuple(images.shape[1:])} and cameras {tuple(cameras.shape[1:])}, expected "
                             f"({resolution}, {resolution}, 3) and ({LABEL_SIZE},)")
        cameras = cameras.to(torch.float32)
        if flips.any():
            mask = torch.from_numpy(flips)
            cameras[mask] = mirror_label(cameras[mask])
        indices = torch.tensor([sample[3] for sample in chunk], dtype=torch.int64)
        epoch, position, plan = chunk[-1][:3]
        after = (epoch + 1, 0) if position + 1 == len(plan) else (epoch, position + 1)
        return images.permute(0, 3, 1, 2), cameras, indices, after

    def _to_torch(self, images) -> torch.Tensor:
        """uint8 [B,R,R,3]: copied out of DALI's buffers, which the next run reuses."""
        if not self.gpu:
            return torch.from_numpy(np.array(images.as_tensor()))  # np.array copies
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = images.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch.uint8, device=self.device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(self.device))
        return out

"""What the evaluator measures of a generator: fd_data, pose_error_deg, depth_error, consistency_raw/final.

    meter = GeneratorMetrics(trained, device=device)
    meter.add_images(G(z, c, neural_rendering_resolution=nrr), c)    # any number of chunks
    meter.add_consistency(G, z, views, neural_rendering_resolution=nrr)
    values = GeneratorMetrics.combine([meter.partial(), ...], trained)  # partials of every worker

- fd_data: the Frechet distance between the evaluator's features of generated images and of the real images
  it was trained on. A Frechet distance like FID, in a feature space trained on this data set: never FID.
- pose_error_deg: the mean angle between the optical axis of the camera G was asked to render from and the
  one the evaluator sees in G's image.
- depth_error: where the data set has depth, the scale- and shift-invariant error (`evaluator.depth_errors`)
  between G's rendered depth and the evaluator's depth of G's image, both along the optical axis
  (`evaluator.z_depth`), over the evaluator's foreground. A flat picture scores 1, unrelated depth 2.
- consistency_raw / consistency_final: objects rendered from the data set's view pairs
  (`consistency.view_pairs`), each view warped into the other through its partner's rendered depth; the
  colour error over pixels visible in both, divided by the error of the same warp through a flat picture
  facing the camera (`consistency.normalized_consistency`: 0 perfect, 1 no better than a 2D picture), for
  the neural rendering (image_raw, at the neural rendering resolution) and for the super-resolved image.
  Their gap is what the super-resolution breaks.

Generated images are rounded to uint8 before the evaluator sees them, as real images are stored.
Every partial holds sums, so the values do not depend on how the work was split over workers.
"""

import torch

from .consistency import consistency_sums, normalized_consistency
from .evaluator import angle_degrees, depth_errors_against, resample_map, view_direction, z_depth
from .evaluator_training import TrainedEvaluator, to_uint8
from .fid import FeatureStatistics, frechet_distance

FOREGROUND_THRESHOLD = 0.5


class GeneratorMetrics:
    """One worker's sums of the evaluator's measurements of a generator."""

    def __init__(self, trained: TrainedEvaluator, *, device: torch.device):
        self.network = trained.network.to(device)
        self.device = device
        self.features = FeatureStatistics(self.network.feature_dim)
        self.sums = {"images": 0, "pose_error_deg": 0.0, "depth_error": 0.0}
        for kind in ("raw", "final"):
            self.sums.update({kind: 0.0, f"{kind}_flat": 0.0, f"{kind}_pixels": 0.0})

    @torch.no_grad()
    def add_images(self, output: dict, cameras: torch.Tensor) -> None:
        """G's output for cameras [N, 25] ({"image" [N, 3, R, R], "image_depth" [N, 1, r, r], ...})."""
        out = self.network(to_uint8(output["image"].float()))
        self.features.add(out.features)
        self.sums["images"] += len(cameras)
        self.sums["pose_error_deg"] += float(angle_degrees(out.view_direction,
                                                           view_direction(cameras).to(self.device)).sum())
        if out.depth is not None:
            depth = z_depth(output["image_depth"][:, 0].float(), cameras)
            self.sums["depth_error"] += float(depth_errors_against(out, depth).sum())

    @torch.no_grad()
    def add_consistency(self, G, z: torch.Tensor, views: tuple[torch.Tensor, torch.Tensor, torch.Tensor], *,
                        neural_rendering_resolution: int) -> None:
        """Objects z [N, z_dim], conditioned on the median view, rendered from every pair of `views` (views A
        [K, 25], views B [K, 25], the median view [1, 25]; `consistency.view_pairs`), each view warped into the
        other."""
        views_a, views_b, centre = (v.to(self.device) for v in views)
        ws = G.map(z, centre.expand(len(z), -1))
        for camera_a, camera_b in zip(views_a, views_b):
            a = self._render(G, ws, camera_a, neural_rendering_resolution)
            b = self._render(G, ws, camera_b, neural_rendering_resolution)
            for first, second in ((a, b), (b, a)):
                for kind in ("raw", "final"):
                    errors, flat_errors, pixels = consistency_sums(
                        first[kind], first["depth"], first["camera"], second[kind], second["depth"],
                        second["camera"], mask_a=first.get(f"mask_{kind}"), mask_b=second.get(f"mask_{kind}"))
                    self.sums[kind] += float(errors.sum())
                    self.sums[f"{kind}_flat"] += float(flat_errors.sum())
                    self.sums[f"{kind}_pixels"] += float(pixels.sum())

    def _render(self, G, ws: torch.Tensor, camera: torch.Tensor, resolution: int) -> dict:
        """One view of every object: its images in [-1, 1], depth, camera, and the evaluator's foreground
        masks at both image sizes (where the evaluator has a foreground head)."""
        cameras = camera.expand(len(ws), -1)
        output = G.synthesis(ws, cameras, neural_rendering_resolution=resolution, noise_mode="const")
        final = output["image"].float().clamp(-1, 1)
        view = {"raw": output["image_raw"].float(), "final": final, "depth": output["image_depth"].float(),
                "camera": cameras}
        out = self.network(to_uint8(final))
        if out.foreground_logits is not None:
            foreground = torch.sigmoid(out.foreground_logits)
            for kind in ("raw", "final"):
                view[f"mask_{kind}"] = resample_map(foreground, view[kind].shape[-1]) > FOREGROUND_THRESHOLD
        return view

    def partial(self) -> dict:
        """This worker's sums (picklable), for `combine`."""
        return {"features": self.features, "sums": dict(self.sums)}

    @staticmethod
    def combine(partials: list[dict], trained: TrainedEvaluator) -> dict:
        """The metrics from every worker's partial: {"fd_data", "pose_error_deg", "depth_error" (data with
        depth), "consistency_raw", "consistency_final" (None where no pixel was visible in both views),
        "num_generated", "floor"}."""
        features = FeatureStatistics(trained.real.dim)
        sums = dict.fromkeys(partials[0]["sums"], 0.0)
        for partial in partials:
            features.merge(partial["features"])
            for key, value in partial["sums"].items():
                sums[key] += value
        images = max(sums["images"], 1)
        real = trained.real
        values = {"fd_data": frechet_distance(real.mean(), real.covariance(), features.mean(), features.covariance()),
                  "pose_error_deg": sums["pose_error_deg"] / images}
        if trained.network.depth_decoder is not None:
            values["depth_error"] = sums["depth_error"] / images
        for kind in ("raw", "final"):
            values[f"consistency_{kind}"] = normalized_consistency(sums[kind], sums[f"{kind}_flat"])
        return {**values, "num_generated": int(sums["images"]), "consistency_pixels": int(sums["final_pixels"]),
                "floor": dict(trained.floor)}

"""The picture of docs/data.md's "Your own face photos": two photos with their aligned crops and estimated cameras,
and the pose histogram of the LFW faces that scikit-image ships.

    python bench/faces_picture.py docs/faces-example.png    # needs .[faces], scikit-image and matplotlib

Top row: skimage's astronaut and cameraman photos, each with its five alignment points and the outline of the
crop (`dataloading.face_alignment.align_face`), and the 512x512 crops. Bottom left: both cameras as frustums in
EG3D's world (y up), with the frontal FFHQ camera dashed, the pivot (0, 0, 0.2) and the tri-plane box.
Bottom right: yaw and pitch of the first 100 images of skimage's LFW subset (25x25 gray faces, upscaled to 256).
"""

import argparse
import io

import numpy as np
from PIL import Image

LFW_FACES = 100
FRUSTUM_DEPTH = 1.0


def corners_in_photo(face) -> np.ndarray:
    """[5, 2] the crop's corners (closed loop) in photo pixels."""
    size = face.image.size[0]
    inverse = np.linalg.inv(np.vstack([face.transform, [0, 0, 1]]))[:2]
    square = np.array([[0, 0, 1], [size, 0, 1], [size, size, 1], [0, size, 1], [0, 0, 1]], dtype=float)
    return square @ inverse.T


def draw_photo(axis, photo: Image.Image, face, title: str) -> None:
    from dataloading.face_alignment import five_points

    axis.imshow(photo)
    outline = corners_in_photo(face)
    axis.plot(outline[:, 0], outline[:, 1], color="#f0c000", linewidth=1.5)
    points = five_points(face.face.landmarks)
    axis.scatter(points[:, 0], points[:, 1], s=12, color="#ff3030")
    axis.set_title(title, fontsize=9)
    axis.set_xlim(min(0, outline[:, 0].min()), max(photo.width, outline[:, 0].max()))
    axis.set_ylim(max(photo.height, outline[:, 1].max()), min(0, outline[:, 1].min()))
    axis.axis("off")


def draw_frustum(axis, label: np.ndarray, colour: str, name: str, style: str = "-") -> None:
    """A camera's centre, optical axis and image corners at FRUSTUM_DEPTH; world y drawn upwards."""
    cam2world = np.asarray(label, dtype=np.float64)[:16].reshape(4, 4)
    focal = float(label[16])
    centre = cam2world[:3, 3]
    corners = [cam2world[:3, :3] @ np.array([u / focal, v / focal, 1.0]) * FRUSTUM_DEPTH + centre
               for u, v in ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5))]
    lines = [(centre, corner) for corner in corners] + list(zip(corners, corners[1:] + corners[:1]))
    for start, end in lines:
        axis.plot([start[0], end[0]], [start[2], end[2]], [start[1], end[1]], style, color=colour, linewidth=1)
    tip = centre + cam2world[:3, 2] * 2.5
    axis.plot([centre[0], tip[0]], [centre[2], tip[2]], [centre[1], tip[1]], ":", color=colour, linewidth=0.8)
    axis.text(centre[0], centre[2], centre[1] + 0.15, name, color=colour, fontsize=8)


def draw_box(axis) -> None:
    for a in (-0.5, 0.5):
        for b in (-0.5, 0.5):
            for axis_index in range(3):
                start, end = np.full(3, a), np.full(3, a)
                start[axis_index], end[axis_index] = -0.5, 0.5
                start[(axis_index + 1) % 3] = end[(axis_index + 1) % 3] = b
                axis.plot([start[0], end[0]], [start[2], end[2]], [start[1], end[1]], color="#999999", linewidth=0.6)
    axis.scatter([0], [0.2], [0], color="black", s=10)


def lfw_poses(model) -> np.ndarray:
    from skimage import data

    from dataloading.face_alignment import FaceError, align_face

    poses = []
    for face in data.lfw_subset()[:LFW_FACES]:
        photo = Image.fromarray((face * 255).round().astype(np.uint8)).resize((256, 256), Image.Resampling.BICUBIC)
        try:
            aligned = align_face(photo.convert("RGB"), model)
        except FaceError:
            continue
        poses.append((aligned.pose.yaw, aligned.pose.pitch))
    return np.array(poses)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="PNG to write, e.g. docs/faces-example.png")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage import data

    from dataloading.face_alignment import FaceLandmarker, align_face, camera_label

    photos = {"astronaut": Image.fromarray(data.astronaut()),
              "cameraman": Image.fromarray(data.camera()).convert("RGB")}
    with FaceLandmarker() as model:
        faces = {name: align_face(photo, model, name=name) for name, photo in photos.items()}
        poses = lfw_poses(model)
    figure = plt.figure(figsize=(13, 7.2))
    colours = {"astronaut": "#d04040", "cameraman": "#3070c0"}
    for column, (name, face) in enumerate(faces.items()):
        pose = face.pose
        draw_photo(figure.add_subplot(2, 4, 2 * column + 1), photos[name], face,
                   f"{name}: yaw {pose.yaw:.0f}, pitch {pose.pitch:.0f}, roll {pose.roll:.0f} deg")
        crop_axis = figure.add_subplot(2, 4, 2 * column + 2)
        crop_axis.imshow(face.image)
        crop_axis.set_title(f"aligned crop {face.image.size[0]}x{face.image.size[1]}", fontsize=9)
        crop_axis.axis("off")
    cameras = figure.add_subplot(2, 2, 3, projection="3d")
    draw_box(cameras)
    draw_frustum(cameras, camera_label(0.0, 0.0), "#777777", "frontal FFHQ", "--")
    for name, face in faces.items():
        draw_frustum(cameras, face.label, colours[name], name)
    cameras.set_xlabel("x")
    cameras.set_ylabel("z")
    cameras.set_zlabel("y (up)")
    cameras.set_xlim(-2.5, 2.5)
    cameras.set_ylim(-0.5, 3.0)
    cameras.set_zlim(-1.0, 1.0)
    cameras.set_box_aspect((5.0, 3.5, 2.0), zoom=1.3)
    cameras.view_init(elev=35, azim=-70)
    cameras.set_title("estimated cameras (radius 2.7, looking at the pivot)", fontsize=9)
    scatter = figure.add_subplot(2, 2, 4)
    scatter.scatter(poses[:, 0], poses[:, 1], s=10, color="#4878a8")
    scatter.axhline(0, color="#bbbbbb", linewidth=0.8)
    scatter.axvline(0, color="#bbbbbb", linewidth=0.8)
    scatter.set_xlabel("yaw (degrees)")
    scatter.set_ylabel("pitch (degrees)")
    scatter.set_title(f"pose of {len(poses)} of skimage's first {LFW_FACES} LFW faces (25x25, upscaled)", fontsize=9)
    scatter.set_aspect("equal")
    scatter.set_xlim(-45, 45)
    scatter.set_ylim(-30, 30)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    picture = Image.open(buffer).convert("RGB")  # 256 colours: a third of the bytes, the photos still clear
    picture.quantize(256, Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

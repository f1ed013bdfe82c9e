"""FID and KID math against scipy and direct implementations; the Inception-v3 layout against the
architecture tables of the paper and the TensorFlow graph; weight loading, checksums and the download cache."""

import functools
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from eg3d.metrics.fid import FeatureStatistics, frechet_distance, kernel_distance
from eg3d.metrics.inception import InceptionV3Features, RandomFeatures, feature_network, load_inception

# --- Frechet distance -----------------------------------------------------------------------------------


def scipy_frechet(mu1, sigma1, mu2, sigma2):
    """The textbook formula with a general matrix square root."""
    covmean = np.real(scipy.linalg.sqrtm(sigma1 @ sigma2))
    difference = mu1 - mu2
    return difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def sample_gaussian(rng, dim, count, scale=1.0, shift=0.0):
    mixing = rng.normal(size=(dim, dim)) * scale / np.sqrt(dim)
    x = rng.normal(size=(count, dim)) @ mixing + shift
    return x.mean(axis=0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("dim,count1,count2", [(3, 50, 60), (32, 400, 300), (64, 20, 500), (128, 50, 40)])
def test_frechet_distance_matches_scipy_sqrtm(dim, count1, count2):
    # count < dim: rank-deficient covariances, as with few samples of 2048-d Inception features.
    rng = np.random.default_rng(dim)
    mu1, sigma1 = sample_gaussian(rng, dim, count1)
    mu2, sigma2 = sample_gaussian(rng, dim, count2, scale=1.5, shift=0.2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(scipy_frechet(mu1, sigma1, mu2, sigma2),
                                                                       rel=1e-6)


def test_frechet_distance_of_diagonal_covariances():
    # Commuting covariances: sqrtm(S1 S2) = diag(sqrt(a b)), so the trace term is sum (sqrt a - sqrt b)^2.
    a, b = np.array([0.5, 2.0, 3.0, 0.0]), np.array([1.0, 0.1, 3.0, 4.0])
    zero = np.zeros(4)
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(zero, np.diag(a), zero, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_identical_statistics_is_zero():
    mu, sigma = sample_gaussian(np.random.default_rng(1), 64, 40)  # rank deficient
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)


def test_frechet_distance_of_a_mean_shift_is_its_squared_length():
    rng = np.random.default_rng(2)
    mu, sigma = sample_gaussian(rng, 16, 100)
    shift = rng.normal(size=16)
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift, rel=1e-8)


def test_frechet_distance_accepts_tensors():
    rng = np.random.default_rng(3)
    stats = [*sample_gaussian(rng, 8, 30), *sample_gaussian(rng, 8, 30, shift=1.0)]
    tensors = [torch.from_numpy(s).float() for s in stats]
    assert frechet_distance(*tensors) == pytest.approx(frechet_distance(*[t.double().numpy() for t in tensors]))


# --- feature statistics ---------------------------------------------------------------------------------


def random_features(count=200, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count, dim)) * rng.uniform(0.5, 3, size=dim) + rng.normal(size=dim) * 5


def test_statistics_match_numpy_when_added_in_chunks():
    data = random_features()
    statistics = FeatureStatistics(16, max_kept=50)
    for start, stop in [(0, 7), (7, 100), (100, 101), (101, 200)]:
        statistics.add(torch.from_numpy(data[start:stop]))
    assert statistics.count == 200
    np.testing.assert_allclose(statistics.mean().numpy(), data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(statistics.covariance().numpy(), np.cov(data, rowvar=False), rtol=1e-10, atol=1e-12)
    assert statistics.kept.dtype == torch.float32
    np.testing.assert_array_equal(statistics.kept.numpy(), data[:50].astype(np.float32))


def test_merge_equals_adding_everything():
    data = random_features(seed=1)
    whole = FeatureStatistics(16, max_kept=150)
    whole.add(torch.from_numpy(data))
    first, second = FeatureStatistics(16, max_kept=150), FeatureStatistics(16, max_kept=150)
    first.add(torch.from_numpy(data[:120]))
    second.add(torch.from_numpy(data[120:]))
    first.merge(second)
    assert first.count == whole.count
    np.testing.assert_allclose(first.mean().numpy(), whole.mean().numpy(), rtol=1e-12)
    np.testing.assert_allclose(first.covariance().numpy(), whole.covariance().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(first.kept.numpy(), whole.kept.numpy())


def test_statistics_round_trip_through_bytes_and_files(tmp_path):
    statistics = FeatureStatistics(16, max_kept=10)
    statistics.add(torch.from_numpy(random_features(seed=2)))
    path = tmp_path / "stats.npz"
    statistics.save(str(path))
    with open(path, "rb") as file:
        from_file = FeatureStatistics.load(file)
    for restored in (FeatureStatistics.from_bytes(statistics.to_bytes()), FeatureStatistics.load(str(path)), from_file):
        assert (restored.count, restored.max_kept, restored.dim) == (200, 10, 16)
        for name in ("sum", "outer", "kept"):
            assert torch.equal(getattr(restored, name), getattr(statistics, name)), name


def test_statistics_reject_bad_input():
    statistics = FeatureStatistics(4)
    with pytest.raises(ValueError, match="4"):
        statistics.add(torch.zeros(3, 5))
    statistics.add(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="at least 2"):
        statistics.covariance()
    with pytest.raises(ValueError):
        statistics.merge(FeatureStatistics(5))


# --- kernel inception distance --------------------------------------------------------------------------


def direct_kid(x, y):
    """Unbiased MMD^2, cubic polynomial kernel: explicit kernel matrices, off-diagonal means within a set."""
    d = x.shape[1]
    k_xx, k_yy, k_xy = [(a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y))]
    off_diagonal = ~np.eye(len(x), dtype=bool)
    return k_xx[off_diagonal].mean() + k_yy[off_diagonal].mean() - 2 * k_xy.mean()


def test_kid_on_everything_matches_direct_computation():
    x, y = random_features(100, 8, seed=3), random_features(100, 8, seed=4)
    # One subset of all 100: a permutation of each set, which MMD does not see.
    assert kernel_distance(x, y, num_subsets=1, max_subset_size=500) == pytest.approx(direct_kid(x, y), rel=1e-10)


def test_kid_averages_seeded_subsets():
    x, y = random_features(90, 8, seed=5), random_features(70, 8, seed=6)
    rng = np.random.default_rng(7)
    expected = []
    for _ in range(5):
        subset_x = x[rng.choice(90, 30, replace=False)]
        subset_y = y[rng.choice(70, 30, replace=False)]
        expected.append(direct_kid(subset_x, subset_y))
    kid = kernel_distance(torch.from_numpy(x), torch.from_numpy(y), num_subsets=5, max_subset_size=30, seed=7)
    assert kid == pytest.approx(np.mean(expected), rel=1e-10)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same = kernel_distance(x, y, num_subsets=20, max_subset_size=200)
    shifted = kernel_distance(x, y + 0.5, num_subsets=20, max_subset_size=200)
    assert shifted > 0
    assert abs(same) < 0.05 * shifted
    assert abs(kernel_distance(x, x, num_subsets=20, max_subset_size=200)) < 0.05 * shifted
    with pytest.raises(ValueError):
        kernel_distance(x[:1], y)


# --- Inception-v3 layout --------------------------------------------------------------------------------

# Every convolution as (name, in channels, out channels, kernel height, kernel width), from the tables of
# Szegedy et al. 2016 ("Rethinking the Inception Architecture") as realized in TensorFlow's graph.


def block_a(cin, pool_features):
    return [("branch1x1", cin, 64, 1, 1), ("branch5x5_1", cin, 48, 1, 1), ("branch5x5_2", 48, 64, 5, 5),
            ("branch3x3dbl_1", cin, 64, 1, 1), ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3),
            ("branch_pool", cin, pool_features, 1, 1)]


def block_b(cin):
    return [("branch3x3", cin, 384, 3, 3), ("branch3x3dbl_1", cin, 64, 1, 1), ("branch3x3dbl_2", 64, 96, 3, 3),
            ("branch3x3dbl_3", 96, 96, 3, 3)]


def block_c(cin, c7):
    return [("branch1x1", cin, 192, 1, 1), ("branch7x7_1", cin, c7, 1, 1), ("branch7x7_2", c7, c7, 1, 7),
            ("branch7x7_3", c7, 192, 7, 1), ("branch7x7dbl_1", cin, c7, 1, 1), ("branch7x7dbl_2", c7, c7, 7, 1),
            ("branch7x7dbl_3", c7, c7, 1, 7), ("branch7x7dbl_4", c7, c7, 7, 1), ("branch7x7dbl_5", c7, 192, 1, 7),
            ("branch_pool", cin, 192, 1, 1)]


def block_d(cin):
    return [("branch3x3_1", cin, 192, 1, 1), ("branch3x3_2", 192, 320, 3, 3), ("branch7x7x3_1", cin, 192, 1, 1),
            ("branch7x7x3_2", 192, 192, 1, 7), ("branch7x7x3_3", 192, 192, 7, 1), ("branch7x7x3_4", 192, 192, 3, 3)]


def block_e(cin):
    return [("branch1x1", cin, 320, 1, 1), ("branch3x3_1", cin, 384, 1, 1), ("branch3x3_2a", 384, 384, 1, 3),
            ("branch3x3_2b", 384, 384, 3, 1), ("branch3x3dbl_1", cin, 448, 1, 1), ("branch3x3dbl_2", 448, 384, 3, 3),
            ("branch3x3dbl_3a", 384, 384, 1, 3), ("branch3x3dbl_3b", 384, 384, 3, 1), ("branch_pool", cin, 192, 1, 1)]


def inception_convolutions():
    stem = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 32, 64, 3, 3),
            ("Conv2d_3b_1x1", 64, 80, 1, 1), ("Conv2d_4a_3x3", 80, 192, 3, 3)]
    blocks = {"Mixed_5b": block_a(192, 32), "Mixed_5c": block_a(256, 64), "Mixed_5d": block_a(288, 64),
              "Mixed_6a": block_b(288), "Mixed_6b": block_c(768, 128), "Mixed_6c": block_c(768, 160),
              "Mixed_6d": block_c(768, 160), "Mixed_6e": block_c(768, 192), "Mixed_7a": block_d(768),
              "Mixed_7b": block_e(1280), "Mixed_7c": block_e(2048)}
    return stem + [(f"{block}.{name}", *shape) for block, layers in blocks.items() for name, *shape in layers]


def expected_state_dict_shapes():
    shapes = {}
    for name, cin, cout, kh, kw in inception_convolutions():
        shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for statistic in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{statistic}"] = (cout,)
        shapes[f"{name}.bn.num_batches_tracked"] = ()
    shapes["fc.weight"], shapes["fc.bias"] = (1008, 2048), (1008,)
    return shapes


# Output [channels, height, width] of each named layer for a 299x299 input (the paper's Table 1).
BLOCK_OUTPUTS = {
    "Conv2d_1a_3x3": (32, 149, 149), "Conv2d_2a_3x3": (32, 147, 147), "Conv2d_2b_3x3": (64, 147, 147),
    "Conv2d_3b_1x1": (80, 73, 73), "Conv2d_4a_3x3": (192, 71, 71),
    "Mixed_5b": (256, 35, 35), "Mixed_5c": (288, 35, 35), "Mixed_5d": (288, 35, 35),
    "Mixed_6a": (768, 17, 17), "Mixed_6b": (768, 17, 17), "Mixed_6c": (768, 17, 17), "Mixed_6d": (768, 17, 17),
    "Mixed_6e": (768, 17, 17), "Mixed_7a": (1280, 8, 8), "Mixed_7b": (2048, 8, 8), "Mixed_7c": (2048, 8, 8),
}


def he_initialized_inception(seed):
    """Random weights that keep activations near unit scale through all 94 layers (PyTorch's default init
    shrinks them towards zero, which would let wrong pooling or resizing pass unnoticed)."""
    torch.manual_seed(seed)
    network = InceptionV3Features().eval()
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return network


@pytest.fixture(scope="module")
def inception():
    return he_initialized_inception(0)


def record_input(record, name, module, args):
    record[name] = args[0]


def record_output(record, name, module, args, output):
    record[name] = output


@pytest.fixture(scope="module")
def inception_trace(inception):
    """One 299x299 forward pass of two images, with each named block's input and output and the input of
    each pooled branch's convolution recorded."""
    trace = {"inputs": {}, "outputs": {}, "pooled": {}}
    hooks = []
    for name in BLOCK_OUTPUTS:
        block = getattr(inception, name)
        hooks.append(block.register_forward_pre_hook(functools.partial(record_input, trace["inputs"], name)))
        hooks.append(block.register_forward_hook(functools.partial(record_output, trace["outputs"], name)))
        if hasattr(block, "branch_pool"):
            record_pooled = functools.partial(record_input, trace["pooled"], name)
            hooks.append(block.branch_pool.register_forward_pre_hook(record_pooled))
    images = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        trace["features"] = inception(images)
    for hook in hooks:
        hook.remove()
    return trace


def test_inception_state_dict_matches_the_architecture_tables(inception):
    actual = {name: tuple(value.shape) for name, value in inception.state_dict().items()}
    assert actual == expected_state_dict_shapes()


def test_inception_feature_parameter_count():
    # torchvision's Inception-v3 has 27,161,264 parameters (1000 classes, auxiliary classifier included);
    # without the auxiliary head and the classifier the feature layers keep the rest.
    classifier = 2048 * 1000 + 1000
    auxiliary = (768 * 128 + 2 * 128) + (128 * 768 * 5 * 5 + 2 * 768) + (768 * 1000 + 1000)
    from_tables = sum(cout * cin * kh * kw + 2 * cout for _, cin, cout, kh, kw in inception_convolutions())
    assert from_tables == 27_161_264 - classifier - auxiliary
    network = InceptionV3Features()
    assert sum(p.numel() for name, p in network.named_parameters() if not name.startswith("fc.")) == from_tables


def test_inception_batch_norm_uses_tensorflow_epsilon(inception):
    norms = [m for m in inception.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == len(inception_convolutions())
    assert all(m.eps == 0.001 for m in norms)


def test_inception_block_output_shapes(inception_trace):
    for name, shape in BLOCK_OUTPUTS.items():
        assert tuple(inception_trace["outputs"][name].shape) == (2, *shape), name
    features = inception_trace["features"]
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    torch.testing.assert_close(features, inception_trace["outputs"]["Mixed_7c"].mean(dim=(2, 3)))


@pytest.mark.parametrize("block,pool", [("Mixed_5b", "average"), ("Mixed_5d", "average"), ("Mixed_6b", "average"),
                                        ("Mixed_6e", "average"), ("Mixed_7b", "average"), ("Mixed_7c", "max")])
def test_inception_pool_branches_follow_the_tensorflow_graph(inception_trace, block, pool):
    x = inception_trace["inputs"][block]
    pooled = inception_trace["pooled"][block]
    assert x.std() > 0.1  # activations that did not fade to zero, which every pooling would agree on
    if pool == "max":
        torch.testing.assert_close(pooled, F.max_pool2d(x, 3, stride=1, padding=1))
        return
    # TensorFlow's average pool ignores the padding: a border output is the mean of the pixels it covers.
    torch.testing.assert_close(pooled, F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
    assert torch.allclose(pooled[..., 0, 0], x[..., :2, :2].mean(dim=(-2, -1)), atol=1e-6)
    assert not torch.allclose(pooled, F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True))


@pytest.mark.parametrize("height,width", [(64, 80), (512, 400)])
def test_inception_resizes_other_sizes_to_299(inception, height, width):
    # Plain bilinear, as pytorch-fid: no antialiasing when shrinking.
    images = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        features = inception(images)
        resized = inception(F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            from_bfloat16 = inception(images.bfloat16())
    assert features.shape == (1, 2048)
    torch.testing.assert_close(features, resized)
    assert from_bfloat16.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(from_bfloat16, inception(images.bfloat16().float()))


# --- weight files and the download cache ----------------------------------------------------------------


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory):
    """A state dict written with torch.save, named like pytorch-fid's file, and its SHA-256."""
    torch.manual_seed(3)
    network = InceptionV3Features()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("weights") / "pt_inception-test.pth"
    torch.save(network.state_dict(), path)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest(), network.state_dict()


def assert_loaded(network, state_dict):
    assert isinstance(network, InceptionV3Features)
    assert not network.training
    assert not any(p.requires_grad for p in network.parameters())
    loaded = network.state_dict()
    assert loaded.keys() == state_dict.keys()
    assert all(torch.equal(loaded[name], state_dict[name]) for name in state_dict)


@pytest.mark.parametrize("digest_length", [8, 20, 64])
def test_load_inception_from_a_path_checks_the_digest(weight_file, digest_length):
    path, digest, state_dict = weight_file
    assert_loaded(load_inception(path, digest[:digest_length].upper()), state_dict)


def test_load_inception_rejects_a_wrong_digest(weight_file):
    path, digest, _ = weight_file
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "1" * 8
    with pytest.raises(ValueError, match="pt_inception-test.pth") as error:
        load_inception(path, wrong)
    assert wrong in str(error.value) and digest in str(error.value)
    assert os.path.exists(path)  # a user's own file is never deleted
    with pytest.raises(ValueError, match="hex digits"):
        load_inception(path, digest[:7])


def test_load_inception_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_inception(str(tmp_path / "absent.pth"), None)


def test_load_inception_caches_a_url_download(weight_file, tmp_path):
    path, digest, state_dict = weight_file
    source = tmp_path / "source.pth"
    source.write_bytes(open(path, "rb").read())
    cache = tmp_path / "cache"
    assert_loaded(load_inception(f"file://{source}", digest[:8], cache_dir=str(cache)), state_dict)
    [cached] = os.listdir(cache)  # no temporary left behind
    assert cached.endswith("source.pth")
    source.unlink()
    assert_loaded(load_inception(f"file://{source}", digest, cache_dir=str(cache)), state_dict)  # from the cache
    with pytest.raises(ValueError, match="source.pth"):
        load_inception(f"file://{source}", "f" * 8 if digest[:8] != "f" * 8 else "e" * 8, cache_dir=str(cache))
    assert os.listdir(cache) == []  # a cached file with the wrong digest is deleted


def test_load_inception_does_not_cache_a_mismatching_download(weight_file, tmp_path):
    path, digest, _ = weight_file
    wrong = "0" * 64 if not digest.startswith("0") else "1" * 64
    with pytest.raises(ValueError, match=wrong):
        load_inception(f"file://{path}", wrong, cache_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_load_inception_downloads_over_http_into_the_default_cache(weight_file, tmp_path, monkeypatch):
    path, digest, state_dict = weight_file
    monkeypatch.setenv("EG3D_CACHE", str(tmp_path / "cache"))
    handler = functools.partial(QuietHandler, directory=os.path.dirname(path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert_loaded(load_inception(f"{base}/pt_inception-test.pth", digest[:8]), state_dict)
        assert len(os.listdir(tmp_path / "cache")) == 1
        with pytest.raises(FileNotFoundError, match="absent.pth"):
            load_inception(f"{base}/absent.pth", None)
        assert len(os.listdir(tmp_path / "cache")) == 1
    finally:
        server.shutdown()
        server.server_close()


# --- random features and the choice of network ----------------------------------------------------------


def noise_images(count, seed):
    return torch.rand(count, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def gradient_images(count, seed):
    """Smooth images: a linear ramp in a random direction, with random colours at its two ends."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(count, 1, 1, generator=g) * 2 * torch.pi
    coords = torch.linspace(-1, 1, 64)
    ramp = (angle.cos() * coords[None, None, :] + angle.sin() * coords[None, :, None]) / 2 + 0.5  # [N, H, W]
    start, end = (torch.rand(count, 3, 1, 1, generator=g) * 2 - 1 for _ in range(2))
    return start + (end - start) * ramp[:, None]


def feature_distance(network, images1, images2):
    with torch.no_grad():
        stats = []
        for images in (images1, images2):
            statistics = FeatureStatistics(network.feature_dim)
            statistics.add(network(images))
            stats += [statistics.mean(), statistics.covariance()]
    return frechet_distance(*stats)


def test_random_features_are_seeded():
    images = noise_images(4, seed=0)
    with torch.no_grad():
        first, again = RandomFeatures(seed=5)(images), RandomFeatures(seed=5)(images)
        other = RandomFeatures(seed=6)(images)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert all(torch.equal(a, b) for a, b in zip(RandomFeatures(seed=5).state_dict().values(),
                                                  RandomFeatures(seed=5).state_dict().values()))


@pytest.mark.parametrize("feature_dim,size", [(256, 64), (64, 32), (128, 200)])
def test_random_features_shape(feature_dim, size):
    network = RandomFeatures(feature_dim=feature_dim)
    assert network.feature_dim == feature_dim
    with torch.no_grad():
        features = network(torch.rand(3, 3, size, size).bfloat16() * 2 - 1)
    assert features.shape == (3, feature_dim) and features.dtype == torch.float32
    with pytest.raises(ValueError):
        RandomFeatures(feature_dim=100)


def test_random_features_separate_image_distributions():
    network = RandomFeatures()
    same_noise = feature_distance(network, noise_images(500, seed=1), noise_images(500, seed=2))
    same_gradients = feature_distance(network, gradient_images(500, seed=3), gradient_images(500, seed=4))
    different = feature_distance(network, noise_images(500, seed=1), gradient_images(500, seed=3))
    assert different > 10 * max(same_noise, same_gradients)


def test_feature_network_choice(weight_file):
    name, network = feature_network("auto", weights=None, sha256=None, seed=4)
    assert name == "random" and isinstance(network, RandomFeatures)
    assert torch.equal(network.conv0, RandomFeatures(seed=4).conv0)
    assert feature_network("random", weights=weight_file[0], sha256=None)[0] == "random"
    name, network = feature_network("auto", weights=weight_file[0], sha256=weight_file[1][:8])
    assert name == "inception_v3" and isinstance(network, InceptionV3Features)
    with pytest.raises(ValueError, match="metrics.inception_weights"):
        feature_network("inception_v3", weights=None, sha256=None)
    with pytest.raises(ValueError, match="metrics.extractor"):
        feature_network("inception", weights=None, sha256=None)

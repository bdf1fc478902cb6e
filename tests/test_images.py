"""Image tasks: loaders, the VQGAN-style model, metric naming and values, and tiny end-to-end runs (CPU)."""

from __future__ import annotations

import copy
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from task_helpers import evaluate_with_nine_codes

import vqbench.image_metrics as im
from vqbench.errors import UserError
from vqbench.registry import create_method, create_task
from vqbench.runner import run
from vqbench.spec import Budget, make_spec
from vqbench.tasks import image_data as data
from vqbench.tasks.vqgan import (
    Decoder,
    Encoder,
    PatchDiscriminator,
    TimmEncoder,
    VQAutoencoder,
    adaptive_weight,
    build_encoder,
    frozen_call,
    hinge_d_loss,
)

TINY = dict(latent_dim=4, codebook_size=16, channels=8, num_res_blocks=1, eval_batch_size=64, feature_bank_size=256)


@pytest.fixture(autouse=True)
def offline_weights(tmp_path, monkeypatch):
    """No pretrained weights anywhere: an empty torch hub dir and no weight env vars."""
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    for var in (im.INCEPTION_WEIGHTS_ENV, im.FD_MODEL_ENV, im.FD_WEIGHTS_ENV, data.DATA_ENV, "VQBENCH_WORKERS"):
        monkeypatch.delenv(var, raising=False)
    torch.set_num_threads(1)
    return hub


# -- loaders ---------------------------------------------------------------------------------------
def test_digits_loader():
    from sklearn.datasets import load_digits as sk

    train, test = data.load_digits(n_eval=297, split_seed=0)
    assert isinstance(train, data.TensorImages) and train.images.dtype == torch.uint8
    assert train.images.shape == (1500, 1, 8, 8) and test.images.shape == (297, 1, 8, 8)
    assert (train.channels, train.size) == (1, (8, 8))
    raw = sk().images
    # every image is a rescaled sklearn image and the split is a partition of all 1797
    flat = {tuple(np.rint(r * 255 / 16).astype(np.uint8).ravel()) for r in raw}
    seen = [tuple(x.numpy().ravel()) for x in torch.cat([train.images, test.images])]
    assert set(seen) <= flat and len(seen) == raw.shape[0]
    assert int(train.images.max()) == 255
    again, _ = data.load_digits(n_eval=297, split_seed=0)
    assert torch.equal(again.images, train.images)
    other, _ = data.load_digits(n_eval=297, split_seed=1)
    assert not torch.equal(other.images, train.images)
    with pytest.raises(UserError):
        data.load_digits(n_eval=5000)


def test_patches_loader():
    train, test = data.load_patches(photos=["astronaut", "coffee"], patch_size=16, train_stride=8, eval_fraction=0.25)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 16, 16)
    astro = torch.from_numpy(data.skimage_photo("astronaut")).permute(2, 0, 1)
    cut = round(512 * 0.75)
    n_rows, n_cols = (512 - 16) // 8 + 1, (cut - 16) // 8 + 1
    assert torch.equal(train.images[0], astro[:, :16, :16])
    assert torch.equal(train.images[1], astro[:, :16, 8:24])  # row-major grid
    assert torch.equal(train.images[n_cols], astro[:, 8:24, :16])
    assert torch.equal(test.images[0], astro[:, :16, cut:cut + 16])  # eval stride = patch size by default
    assert train.images.shape[0] == n_rows * n_cols + ((400 - 16) // 8 + 1) * ((450 - 16) // 8 + 1)
    with pytest.raises(UserError, match="bundled RGB photos"):
        data.load_patches(photos=["nope"])
    with pytest.raises(UserError):
        data.load_patches(patch_size=4096)


def write_cifar(folder: Path, per_batch: int = 4, n_test: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A tiny cifar-10-batches-py folder in the official format (pickled dicts with byte-string keys)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in (*data.CIFAR10_TRAIN_FILES, data.CIFAR10_TEST_FILE):
        n = n_test if name == data.CIFAR10_TEST_FILE else per_batch
        rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        entry = {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        written[name] = (rows, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane"] * 10, b"num_vis": 3072}, f, protocol=2)
    return written


def test_cifar10_loader(tmp_path, monkeypatch):
    written = write_cifar(tmp_path / "root" / "cifar-10-batches-py")
    train, test = data.load_cifar10(tmp_path / "root")
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    rows, labels = written["data_batch_2"]
    # channel-major rows: 1024 red values (row-major 32x32), then green, then blue
    img = train.images[4]
    assert torch.equal(img[0], torch.from_numpy(rows[0, :1024].reshape(32, 32)))
    assert torch.equal(img[2], torch.from_numpy(rows[0, 2048:].reshape(32, 32)))
    assert train.labels[4:8].tolist() == labels
    assert test.labels.tolist() == written["test_batch"][1]
    # $VQBENCH_DATA/cifar10 is the default root; subsets are fixed and deterministic
    (tmp_path / "env").mkdir()
    (tmp_path / "root").rename(tmp_path / "env" / "cifar10")
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "env"))
    sub_a, sub_eval = data.load_cifar10(n_train=5, n_eval=2)
    sub_b, _ = data.load_cifar10(n_train=5, n_eval=2)
    assert sub_a.images.shape[0] == 5 and sub_eval.images.shape[0] == 2 and torch.equal(sub_a.images, sub_b.images)
    full, _ = data.load_cifar10()
    assert all(any(torch.equal(x, y) for y in full.images) for x in sub_a.images)


def test_cifar10_missing_data_says_where_and_how(tmp_path):
    with pytest.raises(UserError, match="data_root.*VQBENCH_DATA"):
        data.load_cifar10()
    with pytest.raises(UserError, match=r"does not exist.*cs\.toronto\.edu"):
        data.load_cifar10(tmp_path / "missing")
    folder = tmp_path / "partial" / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(UserError, match="lacks data_batch_3"):
        data.load_cifar10(tmp_path / "partial")
    spec = make_spec("cifar10", "vq", {"data_root": str(tmp_path / "missing")}, budget={"steps": 1})
    with pytest.raises(UserError, match="cifar"):
        run(spec, tmp_path / "results", progress=False)


def write_pngs(folder: Path, n: int, size: tuple[int, int] = (40, 24), seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def test_image_folder_loader(tmp_path):
    root = tmp_path / "flat"
    paths = write_pngs(root / "sub", 30, size=(40, 24))
    train, test = data.load_image_folder(root, size=16, eval_fraction=0.3)
    assert len(train) + len(test) == 30 and len(test) > 0
    assert set(train.files).isdisjoint(test.files)
    img = train[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 16, 16)
    # shorter side 24 -> 16 (width 40 -> 27), centre crop: equals PIL's own resize + crop
    ref = Image.open(train.files[0]).convert("RGB").resize((27, 16), Image.Resampling.BICUBIC, reducing_gap=None)
    ref = np.asarray(ref.crop((5, 0, 21, 16)))
    assert torch.equal(img, torch.from_numpy(ref.copy()).permute(2, 0, 1))
    # deterministic subsets, a subset of the full split, stable across calls
    sub1, _ = data.load_image_folder(root, size=16, eval_fraction=0.3, max_train=5, subset_seed=3)
    sub2, _ = data.load_image_folder(root, size=16, eval_fraction=0.3, max_train=5, subset_seed=3)
    assert sub1.files == sub2.files and len(sub1) == 5 and set(sub1.files) <= set(train.files)
    mem = sub1.materialize()
    assert torch.equal(mem.images[2], sub1[2])
    # train/ and val/ sub-folders are used as the splits
    split_root = tmp_path / "split"
    write_pngs(split_root / "train" / "a", 6)
    write_pngs(split_root / "val", 2, seed=1)
    tr, va = data.load_image_folder(split_root, size=8)
    assert len(tr) == 6 and len(va) == 2
    with pytest.raises(UserError, match="does not exist"):
        data.load_image_folder(tmp_path / "nope", size=8)
    assert len(paths) == 30


def test_imagenet_preset(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="image-net.org"):
        data.load_imagenet()
    write_pngs(tmp_path / "imagenet" / "train" / "n01", 4, size=(150, 130))
    write_pngs(tmp_path / "imagenet" / "val", 2, size=(130, 150), seed=1)
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    train, test = data.load_imagenet(size=128)
    assert train[0].shape == (3, 128, 128) and len(train) == 4 and len(test) == 2
    task = create_task("imagenet128", **TINY)
    task.setup(torch.device("cpu"), 0)
    assert task.image_size == (128, 128) and task.token_grid == (16, 16)
    assert isinstance(task.train_data, data.TensorImages)  # a small split is decoded once into memory
    assert create_task("imagenet256").downsample == 16


def test_batch_loader_is_a_function_of_step(tmp_path):
    files = write_pngs(tmp_path / "imgs", 10, size=(8, 8))
    folder = data.ImageFolderImages(files, size=8)
    mem = folder.materialize()
    a = data.BatchLoader(folder, 4, seed=1, device=torch.device("cpu"))
    b = data.BatchLoader(mem, 4, seed=1, device=torch.device("cpu"))
    steps = [0, 1, 2, 5, 3, 3, 7]  # out of order and repeated: the prefetching iterator restarts
    for step in steps:
        assert torch.equal(a(step), b(step))
    assert torch.equal(torch.cat(list(data.iterate(folder, 3, torch.device("cpu")))), mem.images)


def test_value_conversions():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    y = data.to_model(x)
    assert float(y.min()) == -1.0 and float(y.max()) == 1.0
    assert torch.equal(data.to_uint8(y), x)
    assert torch.allclose(data.to_unit(y) * 255, x.float(), atol=1e-4)


# -- model -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("downsample,channels,blocks,latent,mult,attention", [
    (1, 8, 1, 3, None, False), (2, 8, 0, 4, None, False), (4, 16, 2, 8, None, True),
    (8, 8, 1, 16, [1, 2, 2, 4], False), (16, 4, 1, 4, None, True)])
def test_encoder_decoder_shapes(downsample, channels, blocks, latent, mult, attention):
    enc = Encoder(3, latent, downsample, channels, mult, blocks, attention)
    dec = Decoder(3, latent, downsample, channels, mult, blocks, attention)
    x = torch.randn(2, 3, 32, 32)
    z = enc(x)
    assert z.shape == (2, latent, 32 // downsample, 32 // downsample)
    assert dec(z).shape == x.shape


def test_capacity_grows_with_channels_and_blocks():
    sizes = [sum(p.numel() for p in Encoder(1, 8, 4, c, None, b).parameters()) for c, b in [(8, 1), (16, 1), (16, 2)]]
    assert sizes[0] < sizes[1] < sizes[2]
    with pytest.raises(UserError, match="power of two"):
        Encoder(3, 8, downsample=6)
    with pytest.raises(UserError, match="channel_mult"):
        Encoder(3, 8, downsample=4, channel_mult=[1, 2])


def test_autoencoder_tokens_roundtrip():
    torch.manual_seed(0)
    q = create_method("vq", dim=4, codebook_size=16)
    model = VQAutoencoder(Encoder(1, 4, 2, 8, None, 1), q, Decoder(1, 4, 2, 8, None, 1)).eval()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    out = model(x)
    assert out.quant.indices.shape == (3, 4, 4) and out.z.shape == (3, 4, 4, 4)
    tokens = model.tokens(x)
    assert torch.equal(tokens, out.quant.indices)
    assert torch.allclose(model.decode_tokens(tokens), out.x_hat, atol=1e-5)


def test_timm_encoder_local_weights_only(tmp_path):
    import timm

    with pytest.raises(UserError, match="strides"):
        TimmEncoder("test_resnet", 3, 8, downsample=3)
    enc = TimmEncoder("test_resnet", 3, 8, downsample=8)
    assert enc(torch.rand(2, 3, 32, 32) * 2 - 1).shape == (2, 8, 4, 4)
    torch.manual_seed(1)
    reference = timm.create_model("test_resnet")
    weights = tmp_path / "test_resnet.pth"
    torch.save(reference.state_dict(), weights)
    loaded = TimmEncoder("test_resnet", 3, 8, downsample=4, weights=str(weights))
    assert torch.equal(loaded.backbone.state_dict()["conv1.0.weight"], reference.state_dict()["conv1.0.weight"])
    with pytest.raises(UserError, match="does not exist"):
        TimmEncoder("test_resnet", 3, 8, downsample=4, weights=str(tmp_path / "missing.pth"))
    assert isinstance(build_encoder("timm:test_resnet", 1, 8, 4, 8, None, 1, False), TimmEncoder)
    with pytest.raises(UserError, match="unknown encoder"):
        build_encoder("resnet", 1, 8, 4, 8, None, 1, False)


def test_discriminator_and_adversarial_pieces():
    for layers, size in [(3, 32), (2, 16), (1, 8)]:
        d = PatchDiscriminator(3, 8, layers)
        side = PatchDiscriminator.output_size(size, layers)
        assert d(torch.randn(2, 3, size, size)).shape == (2, 1, side, side)
    assert PatchDiscriminator.output_size(16, 3) < 1
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * (0.25 + 0.5))
    d = PatchDiscriminator(3, 8, 1)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    frozen_call(d, x).mean().backward()
    assert x.grad is not None and all(p.grad is None for p in d.parameters())
    w = torch.randn(4, 4, requires_grad=True)
    inp = torch.randn(3, 4)
    rec, g = (inp @ w).pow(2).mean(), (inp @ w).mean()
    lam = adaptive_weight(rec, g, w)
    expected = torch.autograd.grad(rec, w, retain_graph=True)[0].norm() / (
        torch.autograd.grad(g, w)[0].norm() + 1e-4)
    assert float(lam) == pytest.approx(float(expected), rel=1e-5)


# -- metrics ---------------------------------------------------------------------------------------
def test_fd_naming_rule(tmp_path, monkeypatch, offline_weights):
    assert im.inception_weights() is None
    assert im.resolve_extractor() == "randcnn"
    assert im.fd_metric_name("randcnn") == "fd_randcnn"
    assert im.fd_metric_name("inception", prefix="g") == "gfid_inception"
    assert im.fd_metric_name("vit_small_patch16_224.augreg_in21k") == "fd_vit_small_patch16_224_augreg_in21k"
    # the Inception file in the hub cache counts only with torch-fidelity importable
    (offline_weights / "checkpoints" / im.INCEPTION_WEIGHTS_FILE).write_bytes(b"x")
    monkeypatch.setattr(im.importlib.util, "find_spec", lambda name: None)
    assert im.resolve_extractor() == "randcnn"
    monkeypatch.setattr(im.importlib.util, "find_spec", lambda name: object())
    assert im.resolve_extractor() == "inception"
    assert im.fd_metric_name(im.resolve_extractor()) == "fid_inception"
    (offline_weights / "checkpoints" / im.INCEPTION_WEIGHTS_FILE).unlink()
    assert im.resolve_extractor() == "randcnn"
    weights = tmp_path / "incep.pth"
    weights.write_bytes(b"x")
    monkeypatch.setenv(im.INCEPTION_WEIGHTS_ENV, str(weights))
    assert im.resolve_extractor() == "inception"
    monkeypatch.setenv(im.INCEPTION_WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match=im.INCEPTION_WEIGHTS_ENV):
        im.resolve_extractor()
    monkeypatch.delenv(im.INCEPTION_WEIGHTS_ENV)
    monkeypatch.setenv(im.FD_MODEL_ENV, "test_resnet")
    with pytest.raises(UserError, match=im.FD_WEIGHTS_ENV):
        im.resolve_extractor()


def test_timm_fd_extractor_is_named_after_its_model(tmp_path, monkeypatch):
    import timm

    weights = tmp_path / "w.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), weights)
    monkeypatch.setenv(im.FD_MODEL_ENV, "test_resnet")
    monkeypatch.setenv(im.FD_WEIGHTS_ENV, str(weights))
    feats = im.ImageFeatures()
    assert feats.metric_name() == "fd_test_resnet" and feats(torch.rand(2, 1, 8, 8)).shape == (2, feats.num_features)


def test_reconstruction_metrics_values_and_names(offline_weights):
    torch.manual_seed(0)
    real = torch.rand(12, 3, 32, 32)
    fake = (real + 0.1 * torch.randn_like(real)).clamp(0, 1)
    m = im.ReconstructionMetrics("cpu", (32, 32))
    for i in range(0, 12, 5):
        m.update(real[i:i + 5], fake[i:i + 5])
    out = m.compute()
    assert set(out) == {"psnr", "ssim", "mse", "fd_randcnn"}  # no lpips without its weights, no fid_inception
    per_image = ((real - fake) ** 2).mean(dim=(1, 2, 3))
    assert out["psnr"] == pytest.approx(float((10 * torch.log10(1 / per_image)).mean()), rel=1e-5)
    assert out["mse"] == pytest.approx(float(((real - fake) ** 2).mean()), rel=1e-5)
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    assert out["ssim"] == pytest.approx(float(ssim(fake, real, data_range=1.0)), rel=1e-5)
    # a Frechet distance of a set with itself is ~0; real statistics survive reset
    m.reset()
    m.update(real, real)
    same = m.compute()
    assert abs(same["fd_randcnn"]) < 1e-3 * out["fd_randcnn"] and same["psnr"] > 80
    with pytest.raises(UserError, match="LPIPS"):
        im.ReconstructionMetrics("cpu", (32, 32), lpips=True)
    small = im.ReconstructionMetrics("cpu", (8, 8), fd=False)
    small.update(real[:, :1, :8, :8], fake[:, :1, :8, :8])
    assert set(small.compute()) == {"psnr", "ssim", "mse"}
    assert im.ssim_window(8, 8) == (7, pytest.approx(1.5 * 7 / 11))


def test_lpips_availability_is_a_local_file_check(offline_weights):
    assert not im.lpips_available("alex")
    (offline_weights / "checkpoints" / im.LPIPS_BACKBONE_FILES["alex"]).write_bytes(b"x")
    assert im.lpips_available("alex") and not im.lpips_available("vgg")
    with pytest.raises(UserError, match="unknown LPIPS"):
        im.lpips_available("resnet")


def test_randcnn_is_fixed():
    x = torch.rand(4, 1, 8, 8)
    a, b = im.ImageFeatures("randcnn"), im.ImageFeatures("randcnn")
    assert torch.equal(a(x), b(x)) and a(x).shape == (4, 256)
    assert torch.equal(a(x), a(x.expand(-1, 3, -1, -1)))


# -- tasks end to end ------------------------------------------------------------------------------
def test_digits_end_to_end(tmp_path):
    spec = make_spec("digits", "vq", dict(TINY), budget={"steps": 10, "eval_interval": 10, "batch_size": 32})
    result = run(spec, tmp_path, progress=False)
    assert result.status == "ok", result.error
    for key in ("psnr", "ssim", "mse", "fd_randcnn", "utilization", "perplexity", "dead_codes",
                "embedding_rank", "embeddings_collapse_index", "tokens_collapse_index"):
        assert key in result.final and math.isfinite(result.final[key]), key
    assert "lpips" not in result.final and "fid_inception" not in result.final
    again = run(spec, tmp_path / "again", progress=False)
    assert again.final == result.final  # deterministic on CPU
    from vqbench.store import ResultStore

    row = ResultStore(tmp_path).load_runs().iloc[0]
    assert row["task_kind"] == "reconstruction" and row["items_per_s"] > 0


def test_patches_end_to_end(tmp_path):
    params = dict(TINY, photos=["chelsea"], patch_size=16, train_stride=16, eval_stride=16)
    spec = make_spec("patches", "vq", params, budget={"steps": 10, "eval_interval": 10, "batch_size": 16})
    result = run(spec, tmp_path, progress=False)
    assert result.status == "ok", result.error
    assert {"psnr", "ssim", "fd_randcnn", "utilization"} <= set(result.final)


def test_adversarial_loss_trains_discriminator_and_generator():
    task = create_task("patches", **dict(TINY, photos=["chelsea"], patch_size=16, train_stride=16,
                                         adv_weight=0.5, disc_start=1, disc_layers=2, disc_channels=8))
    task.setup(torch.device("cpu"), 0)
    q = create_method("vq", dim=task.latent_dim, codebook_size=task.codebook_size)
    stage = task.stages(q, Budget(steps=2, batch_size=4, eval_interval=2))[0]
    disc = stage.model.discriminator
    loss0, logs0 = stage.loss(stage.batch(0))  # before disc_start: no adversarial terms
    assert "d_loss" not in logs0
    loss1, logs1 = stage.loss(stage.batch(1))
    assert {"d_loss", "g_loss", "adv_lambda"} <= set(logs1) and torch.isfinite(loss1)
    loss1.backward()
    assert all(p.grad is not None for p in disc.parameters())
    assert stage.model.encoder.conv_in.weight.grad is not None


def test_lpips_loss_needs_local_weights():
    task = create_task("patches", **dict(TINY, lpips_weight=1.0, photos=["chelsea"]))
    with pytest.raises(UserError, match="lpips_weight"):
        task.setup(torch.device("cpu"), 0)


def test_feature_bank_comes_only_from_a_pretrained_extractor(tmp_path):
    """No extractor, no bank (vq-lc then builds one from the task's encoder); a timm backbone with local weights
    gives its features at the token grid."""
    import timm

    task = create_task("digits", **TINY)
    task.setup(torch.device("cpu"), 0)
    assert task.feature_bank() is None
    torch.manual_seed(1)
    weights = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), weights)
    task = create_task("digits", **dict(TINY, encoder="timm:test_resnet", encoder_weights=str(weights),
                                        downsample=4, feature_bank_size=40))
    task.setup(torch.device("cpu"), 0)
    bank = task.feature_bank()
    backbone = build_encoder("timm:test_resnet", 1, TINY["latent_dim"], 4, 8, None, 1, False, weights=str(weights))
    assert bank.shape == (40, backbone.feature_channels) and torch.isfinite(bank).all()
    assert torch.equal(task.feature_bank(), bank)  # a fixed set of images


def test_vqlc_on_digits_builds_its_bank_from_the_warmed_up_encoder():
    """Version 1 clustered 2x2 pixel patches (4 features: codebook rank <= 4 in a 16-dim latent space, and k-means
    starting from repeated values gave ~190 distinct codes of 256). Now: K distinct codes of full rank."""
    task = create_task("digits", **dict(TINY, latent_dim=16, codebook_size=64))
    task.setup(torch.device("cpu"), 0)
    assert task.feature_bank() is None
    torch.manual_seed(0)
    q = create_method("vq-lc", dim=16, codebook_size=64, bank_warmup_steps=4, bank_size=2048)
    stage = task.stages(q, Budget(steps=6, batch_size=32, eval_interval=6))[0]
    probe = copy.deepcopy(q).train()
    z = torch.randn(2, 4, 4, 16, requires_grad=True)
    out = probe(z)  # warm-up: z passes through (identity gradient), the autoencoder trains unquantized
    assert torch.equal(out.z_q, z) and float(out.loss) == 0 and int(probe.init_source) == 0
    opt = torch.optim.Adam([p for p in stage.model.parameters() if p.requires_grad], lr=2e-3)
    for step in range(6):
        loss, _ = stage.loss(stage.batch(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert int(q.init_source) == (4 if step >= 3 else 0)  # the 4th training forward initialises the codes
        if step == 3:
            assert int(q.bank_rows) == 2048 and q.bank.shape[0] == 0  # 4 x 512 distinct rows; freed after
            codes = q.codebook().detach()
            assert torch.unique(codes, dim=0).shape[0] == 64
            assert int(torch.linalg.matrix_rank(codes)) > 4
    ev = stage.evaluate()
    assert ev.metrics["codebook_size"] == 64 and ev.metrics["utilization"] > 0
    short = create_method("vq-lc", dim=16, codebook_size=64).train()
    short.on_step(0, 40)  # a 40-step run warms up for 10 forwards, not the default 100
    assert int(short.warmup_target) == 10


def test_usage_metrics_are_over_the_methods_real_codebook_size():
    """FSQ with levels [3, 3] has 9 codes on a 16-code task: utilization, perplexity and the histogram use 9."""
    _, ev, used = evaluate_with_nine_codes("digits", TINY, batch_size=16)
    assert ev.metrics["codebook_size"] == 9 and len(ev.arrays["usage_histogram"]) == 9
    assert ev.metrics["utilization"] == pytest.approx(used / 9)


def test_quick_budgets_and_metadata():
    from vqbench.registry import TASKS

    for name in ("digits", "patches", "cifar10", "imagefolder", "imagenet128", "imagenet256"):
        entry = TASKS.get(name)
        assert entry.kind == "reconstruction" and entry.main_metric == "psnr" and entry.higher_is_better
        assert {"quick", "paper"} <= set(entry.budgets)
        assert entry.offline == (name in ("digits", "patches"))

"""The one preprocessing function and the training input pipeline: geometry, augmentation maths, seeds, mixup."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from common.config import Variant
from common.augment import augment_and_mix, augment_batch
from common.pipeline import batches_per_epoch, decode_pad_resize, input_pipeline


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def variant(epochs: int = 3, **augment) -> Variant:
    off = {"flip": False, "rotation": 0, "zoom": 0, "crop": 0, "contrast": 0}
    return Variant(name="v", image_size=32, batch_size=8, epochs=epochs, augment={**off, **augment})


@pytest.mark.parametrize("fast", [True, False])
def test_decode_pad_resize_keeps_aspect_ratio_with_centred_padding(fast):
    wide = np.full((200, 400, 3), 200, np.uint8)  # 2:1 landscape, light grey
    out = decode_pad_resize(tf.constant(jpeg(wide)), 64, fast=fast).numpy()
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[:14].max() < 10 and out[-14:].max() < 10  # black bands above and below
    assert abs(int(out[32, 32, 0]) - 200) <= 3 and abs(int(out[32, 2, 0]) - 200) <= 3  # full width kept


def test_fast_decode_matches_full_decode_closely():
    rng = np.random.default_rng(0)
    photo = np.kron(rng.integers(0, 255, (24, 32, 3)), np.ones((32, 32, 1))).astype(np.uint8)  # 768x1024 blocks
    fast = decode_pad_resize(tf.constant(jpeg(photo)), 64, fast=True).numpy().astype(int)
    full = decode_pad_resize(tf.constant(jpeg(photo)), 64, fast=False).numpy().astype(int)
    assert np.abs(fast - full).mean() < 2.0


def test_flip_is_an_exact_mirror_and_the_draw_is_seeded():
    images = tf.constant(np.random.default_rng(1).uniform(0, 255, (64, 32, 32, 3)), tf.float32)
    out = augment_batch(images, tf.constant([3, 4], tf.int64), variant(flip=True)).numpy()
    same = np.isclose(out, images.numpy(), atol=1e-3).all(axis=(1, 2, 3))
    mirrored = np.isclose(out, images.numpy()[:, :, ::-1], atol=1e-3).all(axis=(1, 2, 3))
    assert (same | mirrored).all() and same.any() and mirrored.any()
    again = augment_batch(images, tf.constant([3, 4], tf.int64), variant(flip=True)).numpy()
    other = augment_batch(images, tf.constant([5, 6], tf.int64), variant(flip=True)).numpy()
    assert np.array_equal(out, again) and not np.array_equal(out, other)


def test_crop_stays_inside_the_image():
    flat = tf.fill([8, 32, 32, 3], 100.0)
    out = augment_batch(flat, tf.constant([1, 2], tf.int64), variant(crop=0.25)).numpy()
    assert np.allclose(out, 100.0, atol=1e-3)  # a crop resamples inside the image: no zero fill appears


def test_training_batches_are_uint8_permutations_keyed_to_seed_and_epoch():
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 255, (20, 32, 32, 3)).astype(np.uint8), np.arange(20) % 7
    v = variant(epochs=3)
    steps = batches_per_epoch(20, v)
    batches = list(input_pipeline(x, y, v, training=True))
    assert steps == 3 and len(batches) == 3 * steps  # one stream of every epoch, epoch after epoch
    assert all(b[0].dtype == tf.uint8 and b[1].dtype == tf.int32 for b in batches)  # no per-image work in tf.data
    epochs = [np.concatenate([b[0].numpy() for b in batches[e * steps:(e + 1) * steps]]) for e in range(3)]
    for images in epochs:  # each epoch shows every image once
        assert sorted(map(bytes, images)) == sorted(map(bytes, x))
    assert not np.array_equal(epochs[0], epochs[1])
    again = list(input_pipeline(x, y, v, training=True))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again))
    resumed = list(input_pipeline(x, y, v, training=True, first_epoch=2))  # a resume sees the same batches
    assert len(resumed) == steps and all(np.array_equal(a[0], b[0]) for a, b in zip(batches[2 * steps:], resumed))
    plain = next(iter(input_pipeline(x, y, v, training=False)))
    assert np.array_equal(plain[0].numpy(), x[:8])  # evaluation is never shuffled


def test_mixup_gives_soft_labels_of_at_most_two_classes():
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 255, (32, 32, 32, 3)).astype(np.uint8), np.arange(32) % 7
    seed = tf.constant([5, 9], tf.int64)
    soft = augment_and_mix(x, y, seed, variant(mixup=0.4), 7)[1].numpy()
    assert np.allclose(soft.sum(axis=1), 1.0, atol=1e-5)
    assert ((soft > 1e-6).sum(axis=1) <= 2).all() and (soft.max(axis=1) < 0.999).any()
    hard = augment_and_mix(x, y, seed, variant(), 7)[1].numpy()
    assert set(np.unique(hard)) == {0.0, 1.0}


def test_trainer_augments_only_in_training_and_saves_the_plain_net(tmp_path):
    """The step sees augmented images; predict and the saved model see decode_pad_resize output as is."""
    import keras

    from common.augment import AugmentingTrainer
    from common.models import build_cnn, compile_model

    v = variant(epochs=1, flip=True, rotation=0.1, contrast=0.2, mixup=0.2).model_copy(
        update={"filters": [4, 4, 4], "dense_units": 4})
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 255, (16, 32, 32, 3)).astype(np.uint8), np.arange(16) % 7
    trainer = compile_model(AugmentingTrainer(build_cnn(v, 7), v, 7), v)
    trainer.fit(input_pipeline(x, y, v, True), steps_per_epoch=batches_per_epoch(16, v), verbose=0)
    assert int(trainer.optimizer.iterations) == 2
    trainer.net.save(tmp_path / "model.keras")
    saved = keras.models.load_model(tmp_path / "model.keras")
    assert saved.input_shape == (None, 32, 32, 3) and not isinstance(saved, AugmentingTrainer)
    expected = trainer.predict(input_pipeline(x, y, v, False), verbose=0)
    assert np.allclose(saved.predict(x.astype(np.float32), verbose=0), expected, atol=1e-6)


def letterboxed(n: int = 8, size: int = 32) -> tuple[tf.Tensor, tf.Tensor]:
    """n photos of plain grey 100 in a wide frame: black bars on rows 0-7 and 24-31, content box [0.25,0,0.75,1]."""
    images = np.zeros((n, size, size, 3), np.float32)
    images[:, 8:24] = 100.0
    return tf.constant(images), tf.constant([[0.25, 0.0, 0.75, 1.0]] * n, tf.float32)


def test_content_box_is_where_the_photo_lies_in_its_padded_square():
    from common.pipeline import decode_pad_resize_box, materialise

    wide = np.full((30, 60, 3), 200, np.uint8)
    image, box = decode_pad_resize_box(tf.constant(jpeg(wide)), 32, fast=False)
    assert np.allclose(box.numpy(), [0.25, 0.0, 0.75, 1.0])
    assert image.numpy()[2, 16].max() < 10 and image.numpy()[16, 16].min() > 190  # bar above, photo inside
    labels, per_size = next(materialise([jpeg(wide), jpeg(wide.transpose(1, 0, 2).copy())], ["fish", "shark"],
                                        (32, 16), classes=["shark", "fish"]))
    assert labels.tolist() == [1, 0] and np.allclose(per_size[32][1], [[0.25, 0, 0.75, 1], [0, 0.25, 1, 0.75]])
    assert per_size[16][0].shape == (2, 16, 16, 3) and np.allclose(per_size[16][1], per_size[32][1])


def test_frame_refill_changes_only_the_bars_and_varies_the_fill():
    images, boxes = letterboxed(64)
    v = variant(frame=1.0)
    out = augment_batch(images, tf.constant([1, 2], tf.int64), v, boxes).numpy()
    assert np.allclose(out[:, 8:24], 100.0)  # the photo is untouched
    bars = out[:, :8].reshape(64, -1, 3)
    flat = bars.std(axis=1).max(axis=1) < 1e-3
    assert not np.all(bars == 0, axis=(1, 2)).all()  # not every image keeps black bars
    assert len({round(float(b.mean())) for b in bars}) > 5 and (~flat).any()  # many colours, and noise/edges
    greys = flat & (np.ptp(bars[:, 0], axis=1) < 1e-3) & ~np.isclose(bars[:, 0, 0], 100.0)  # r = g = b, not mean
    assert greys.sum() >= 5 and (bars[greys, 0, 0] == 255.0).any()  # flat grey levels, white among them
    again = augment_batch(images, tf.constant([1, 2], tf.int64), v, boxes).numpy()
    assert np.array_equal(out, again)


def test_content_crop_removes_the_bars_and_border_adds_a_frame():
    images, boxes = letterboxed()
    cropped = augment_batch(images, tf.constant([3, 4], tf.int64), variant(content_crop=1.0), boxes).numpy()
    assert np.allclose(cropped, 100.0, atol=1e-3)  # a square inside the photo: no bar pixel left
    framed = augment_batch(images, tf.constant([3, 4], tf.int64), variant(border=1.0), boxes).numpy()
    assert (np.abs(framed[:, 8, 0] - 100.0).max(axis=1) > 1.0).all()  # the photo's corner is a border colour
    assert np.allclose(framed[:, 16, 16], 100.0) and np.allclose(framed[:, :8], 0.0)  # not its centre, nor the bars


def test_consistency_views_differ_only_in_their_frames_and_the_loss_sees_the_difference():
    """Two views per photo: same crop, flip and mixup partner, other bars; the JS term is 0 only for equal answers."""
    import keras

    from common.augment import AugmentingTrainer, consistency_loss
    from common.models import build_cnn, compile_model

    images, boxes = letterboxed(8)
    images = images.numpy().astype(np.uint8)
    images[:, 8:24, :16] = 30  # a photo with a left and a right half, so flips and crops show
    v = variant(flip=True, crop=0.2, frame=1.0, mixup=0.4, consistency=2.0)
    x, y = augment_and_mix(images, np.arange(8) % 7, tf.constant([6, 7], tf.int64), v, 7, boxes)
    a, b = np.split(x.numpy(), 2)
    assert x.shape[0] == 16 and np.array_equal(*np.split(y.numpy(), 2))  # the same (mixed) labels twice
    assert np.allclose(a[:, 12:20], b[:, 12:20], atol=1e-3)  # the same geometry and mix inside the photo ...
    assert not np.allclose(a[:, :4], b[:, :4])  # ... other bars
    same = tf.constant([[0.7, 0.3]] * 4 + [[0.7, 0.3]] * 4)
    assert float(consistency_loss(same)) == pytest.approx(0.0, abs=1e-6)
    assert float(consistency_loss(tf.constant([[0.9, 0.1]] * 4 + [[0.1, 0.9]] * 4))) > 0.3
    with pytest.raises(ValueError, match="set frame or border"):
        variant(consistency=1.0)
    # a training step adds the term: same weights, views and draws, a larger weight gives a larger loss
    small = {"filters": [4, 4, 4], "dense_units": 4}
    losses = []
    for weight in (1e-9, 50.0):
        keras.utils.set_random_seed(0)
        w = variant(epochs=1, frame=1.0, consistency=weight).model_copy(update=small)
        trainer = compile_model(AugmentingTrainer(build_cnn(w, 7), w, 7), w)
        history = trainer.fit(input_pipeline(images, np.arange(8) % 7, w, True, boxes=boxes.numpy()),
                              steps_per_epoch=1, verbose=0)
        losses.append(history.history["loss"][0])
    assert losses[1] > losses[0]


def test_frame_options_refuse_tensors_without_content_boxes():
    from common.augment import train_boxes
    from common.errors import BadInput

    old_store_split = {"images": np.zeros((2, 32, 32, 3), np.uint8), "labels": np.zeros(2, np.int32)}
    assert train_boxes(old_store_split, variant(), "train") is None  # no frame options: old stores still train
    with pytest.raises(BadInput, match="rerun `aquarium prepare --force`"):
        train_boxes(old_store_split, variant(frame=0.5), "the 32px train tensors")


def test_auto_precision_is_float32_on_every_cpu_unless_the_setting_says_otherwise(monkeypatch):
    from common.errors import BadInput
    from common.models import resolve_precision

    monkeypatch.delenv("AQUARIUM_PRECISION", raising=False)
    if not tf.config.list_physical_devices("GPU"):
        assert resolve_precision("auto") == "float32"  # AMX, AVX512-BF16 or AVX2: the same results
    monkeypatch.setenv("AQUARIUM_PRECISION", "mixed_bfloat16")
    assert resolve_precision("auto") == "mixed_bfloat16" and resolve_precision("float32") == "float32"
    monkeypatch.setenv("AQUARIUM_PRECISION", "bf16")
    with pytest.raises(BadInput, match="AQUARIUM_PRECISION='bf16' is not a precision"):
        resolve_precision("auto")


def test_mixed_precision_trains_with_float32_softmax():
    """bfloat16 itself, where the machine computes it natively (a GPU, or a CPU with AMX / AVX512-BF16); on
    another CPU the same training step runs as float32, and the test says so."""
    import keras

    from common.augment import AugmentingTrainer
    from common.models import build_cnn, compile_model, cpu_has_bf16

    native = cpu_has_bf16() or bool(tf.config.list_physical_devices("GPU"))
    precision = "mixed_bfloat16" if native else "float32"
    if not native:
        warnings.warn("this CPU has no bfloat16 instructions: the mixed-precision test ran as float32")
    v = variant(epochs=1, flip=True).model_copy(update={"filters": [4, 4, 4], "dense_units": 4,
                                                         "precision": precision})
    x, y = np.random.default_rng(5).integers(0, 255, (8, 32, 32, 3)).astype(np.uint8), np.arange(8) % 7
    try:
        trainer = compile_model(AugmentingTrainer(build_cnn(v, 7), v, 7), v)
        trainer.fit(input_pipeline(x, y, v, True), steps_per_epoch=1, verbose=0)
        assert trainer.net.get_layer("conv1").compute_dtype == ("bfloat16" if native else "float32")
        assert trainer.net.get_layer("standardize").compute_dtype == "float32"
        probs = trainer.predict(x, verbose=0)
        assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    finally:
        keras.config.set_dtype_policy("float32")


def test_input_norm_per_image_ignores_global_contrast_and_fixed_keeps_the_photos_values(tmp_path):
    """`image` (the seed's per-image standardisation) answers the same for a photo at half contrast; `fixed`
    scales every image the same way (0..255 -> -1..1), so a frame's colour cannot rescale the photo."""
    import keras

    from common.models import build_cnn
    from common.predict import load

    x = np.random.default_rng(3).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    half = 0.5 * (x - x.mean()) + x.mean()
    per_image = build_cnn(Variant(name="i", image_size=32), 7)
    np.testing.assert_allclose(per_image(x), per_image(half), atol=1e-5)
    fixed = build_cnn(Variant(name="f", image_size=32, input_norm="fixed"), 7)
    fixed.save(tmp_path / "model.keras")
    (tmp_path / "metrics.json").write_text(json.dumps({"classes": [f"c{i}" for i in range(7)]}))  # predict's names
    loaded = load(str(tmp_path / "model.keras")).model
    first = keras.Model(loaded.inputs, loaded.get_layer("rescale").output)
    levels = np.broadcast_to(np.array([0.0, 127.5, 255.0], np.float32), (1, 32, 32, 3))
    np.testing.assert_allclose(np.asarray(first(levels))[0, 0, 0], [-1.0, 0.0, 1.0], atol=1e-6)
    assert np.abs(np.asarray(loaded(x)) - np.asarray(loaded(half))).max() > 1e-4


# --- shards (issue 21): written in bounded pieces, streamed with every draw keyed to (seed, epoch) -------------

def write_photos(tmp_path, n: int = 50, per_shard: int = 10):
    """n photos of 32 px whose pixels all equal their number, in shards of `per_shard`; (store, index)."""
    from common.shards import ShardWriter
    from common.store import open_store

    store = open_store(str(tmp_path / "store"))
    classes = [f"c{i}" for i in range(7)]
    writer = ShardWriter(store, "data/tensors/32", 32, classes, tmp_path, shard_mb=per_shard * 32 * 32 * 3 / 1e6)
    for k in range(n):
        writer.add("train", np.full((32, 32, 3), k, np.uint8), k % 7, f"p{k:03d}.jpg", [0.25, 0, 0.75, 1])
    return store, writer.finish(("train", "valid"), {"fingerprint": "f"})


def test_shards_hold_bounded_pieces_and_an_index_of_counts(tmp_path):
    from common.shards import read_split

    store, index = write_photos(tmp_path, n=45, per_shard=10)
    shards = index["splits"]["train"]["shards"]
    assert [s["images"] for s in shards] == [10, 10, 10, 10, 5]
    assert [s["file"] for s in shards][:2] == ["train-00000.tfrecord", "train-00001.tfrecord"]
    assert shards[0]["classes"] == {f"c{i}": 2 if i < 3 else 1 for i in range(7)}
    assert index["splits"]["train"]["classes"]["c0"] == 7 and index["splits"]["valid"] == {
        "images": 0, "classes": {f"c{i}": 0 for i in range(7)}, "shards": []}
    assert store.is_complete("data/tensors/32")["images"] == {"train": 45, "valid": 0}
    back = read_split(store, "data/tensors/32", "train", tmp_path / "read")
    assert back["images"][:, 0, 0, 0].tolist() == list(range(45))  # stored order, every pixel intact
    assert back["labels"].tolist() == [k % 7 for k in range(45)]
    assert back["filenames"][3] == "p003.jpg" and np.allclose(back["boxes"], [0.25, 0, 0.75, 1])


def test_streamed_training_is_keyed_to_seed_and_epoch_and_resumes_exactly(tmp_path):
    from common.shards import local_shards, streamed_training

    store, index = write_photos(tmp_path)
    paths = local_shards(store, "data/tensors/32", index, "train", tmp_path / "local")
    v = variant(epochs=3).model_copy(update={"shuffle_buffer": 16})

    def photos(ds):
        return [(x[:, 0, 0, 0].numpy().tolist(), y.numpy().tolist()) for x, y in ds]

    first = photos(streamed_training(paths, 50, v))
    per_epoch = batches_per_epoch(50, v)
    assert len(first) == 3 * per_epoch
    epochs = [sum((ids for ids, _ in first[e * per_epoch:(e + 1) * per_epoch]), []) for e in range(3)]
    assert all(sorted(e) == list(range(50)) for e in epochs)  # every photo once per epoch
    assert epochs[0] != list(range(50)) and epochs[0] != epochs[1]  # shuffled, and differently each epoch
    assert all(y == [k % 7 for k in ids] for ids, y in first)  # labels travel with their images
    assert photos(streamed_training(paths, 50, v)) == first  # same seed: same batches
    assert photos(streamed_training(paths, 50, v, first_epoch=2)) == first[2 * per_epoch:]  # a resume: the same
    assert photos(streamed_training(paths, 50, v.model_copy(update={"seed": 7}))) != first
    boxed = next(iter(streamed_training(paths, 50, v, boxes=True)))
    assert np.allclose(boxed[0][1].numpy(), [0.25, 0, 0.75, 1])  # content boxes for frame-robust training

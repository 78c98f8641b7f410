"""The one preprocessing function and the training input pipeline: geometry, augmentation maths, seeds, mixup."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from common.config import Variant
from common.pipeline import augment_batch, decode_pad_resize, input_pipeline


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def variant(**augment) -> Variant:
    off = {"flip": False, "rotation": 0, "zoom": 0, "crop": 0, "contrast": 0}
    return Variant(name="v", image_size=32, batch_size=8, augment={**off, **augment})


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


def test_training_pipeline_reproduces_with_the_seed_and_varies_by_epoch():
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 255, (24, 32, 32, 3)).astype(np.uint8), np.arange(24) % 7
    v = variant(flip=True, rotation=0.1, zoom=0.1, crop=0.1, contrast=0.2)
    first = [b[0].numpy() for b in input_pipeline(x, y, v, training=True)]
    second = [b[0].numpy() for b in input_pipeline(x, y, v, training=True)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    ds = input_pipeline(x, y, v, training=True)
    epoch1, epoch2 = [b[0].numpy() for b in ds], [b[0].numpy() for b in ds]
    assert not np.array_equal(epoch1[0], epoch2[0])
    plain = next(iter(input_pipeline(x, y, v, training=False)))
    assert np.array_equal(plain[0].numpy(), x[:8].astype(np.float32))  # evaluation is never augmented


def test_mixup_gives_soft_labels_of_at_most_two_classes():
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 255, (32, 32, 32, 3)).astype(np.uint8), np.arange(32) % 7
    soft = np.concatenate([b[1].numpy() for b in input_pipeline(x, y, variant(mixup=0.4), training=True)])
    assert np.allclose(soft.sum(axis=1), 1.0, atol=1e-5)
    assert ((soft > 1e-6).sum(axis=1) <= 2).all() and (soft.max(axis=1) < 0.999).any()
    hard = np.concatenate([b[1].numpy() for b in input_pipeline(x, y, variant(), training=True)])
    assert set(np.unique(hard)) == {0.0, 1.0}

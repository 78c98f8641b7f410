"""Images to tensors, once: `prepare` materialises uint8 tensors; training reads them with tf.data.

The seed's recipe -- class name to one-hot through a `tf.lookup` table, decode, pad to square keeping the
aspect ratio, resize -- runs here exactly once per image and size. `decode_pad_resize` is the single definition
of "what the model sees"; `predict` calls it too. Standardisation and augmentation happen on the fly in
`input_pipeline`, because they must differ every epoch (augmentation) or live in the model (standardisation).
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf

from common.config import CLASSES, Variant

RATIOS = (8, 4, 2, 1)  # libjpeg's DCT-domain downscaling factors


def decode_pad_resize(jpeg: tf.Tensor, size: int, fast: bool = True) -> tf.Tensor:
    """JPEG bytes -> uint8 [size, size, 3]: decode, zero-pad to a centred square, resize (antialiased).

    With `fast`, libjpeg decodes at 1/2, 1/4 or 1/8 scale in the DCT domain when the result is still at least
    twice the target size, which skips most of the decoding work and loses nothing after the final resize.
    """
    if fast:
        longest = tf.reduce_max(tf.io.extract_jpeg_shape(jpeg)[:2])
        branches = [lambda r=r: tf.io.decode_jpeg(jpeg, channels=3, ratio=r) for r in RATIOS]
        fits = tf.stack([longest // r >= 2 * size for r in RATIOS])
        index = tf.cast(tf.argmax(tf.cast(fits, tf.int32)), tf.int32)  # the largest ratio that still fits
        index = tf.where(tf.reduce_any(fits), index, len(RATIOS) - 1)
        image = tf.switch_case(index, branches)
    else:
        image = tf.io.decode_jpeg(jpeg, channels=3)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.maximum(height, width)
    image = tf.image.pad_to_bounding_box(image, (side - height) // 2, (side - width) // 2, side, side)
    image = tf.image.resize(image, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def class_table(classes=CLASSES) -> tf.lookup.StaticHashTable:
    """Class name -> label index, the seed's `tf.lookup` table; unknown names map to -1."""
    keys = tf.constant(list(classes))
    values = tf.range(len(classes), dtype=tf.int32)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1)


def materialise(jpegs: list[bytes], class_names: list[str], size: int, fast: bool = True,
                classes=CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Decode, pad and resize every image in parallel with tf.data; returns (uint8 [N,S,S,3], int32 [N])."""
    table = class_table(classes)
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(jpegs, tf.string), tf.constant(class_names)))
    ds = ds.map(lambda jpeg, name: (decode_pad_resize(jpeg, size, fast), table.lookup(name)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    images, labels = [], []
    for x, y in ds.batch(64).prefetch(tf.data.AUTOTUNE):
        images.append(x.numpy())
        labels.append(y.numpy())
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0,), np.int32)
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def tensors_to_bytes(images: np.ndarray, labels: np.ndarray, filenames: list[str]) -> bytes:
    """One split at one size as an uncompressed .npz (the bytes are already compact uint8)."""
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels, filenames=np.asarray(filenames, dtype=str))
    return buf.getvalue()


def tensors_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in ("images", "labels", "filenames")}


def augmenter(variant: Variant) -> tf.keras.Sequential:
    """Seeded random flip, rotation, zoom, crop and contrast, as Keras preprocessing layers."""
    a, s, size = variant.augment, variant.seed, variant.image_size
    layers = []
    if a.flip:
        layers.append(tf.keras.layers.RandomFlip("horizontal", seed=s))
    if a.rotation:
        layers.append(tf.keras.layers.RandomRotation(a.rotation, fill_mode="constant", seed=s + 1))
    if a.zoom:
        layers.append(tf.keras.layers.RandomZoom((-a.zoom, a.zoom), fill_mode="constant", seed=s + 2))
    if a.crop:
        layers += [tf.keras.layers.RandomCrop(round(size * (1 - a.crop)), round(size * (1 - a.crop)), seed=s + 3),
                   tf.keras.layers.Resizing(size, size)]
    if a.contrast:
        layers.append(tf.keras.layers.RandomContrast(a.contrast, seed=s + 4))
    return tf.keras.Sequential(layers, name="augment")


def input_pipeline(images: np.ndarray, labels: np.ndarray, variant: Variant, training: bool,
                   num_classes: int = len(CLASSES)) -> tf.data.Dataset:
    """(float32 images 0..255, one-hot labels) batches. Training batches are shuffled and augmented, seeded.

    Images stay 0..255: the CNN standardises each image in its first layer, MobileNetV3 rescales by itself,
    so the saved model takes the same input `decode_pad_resize` produces.
    """
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    if training:
        ds = ds.shuffle(len(images), seed=variant.seed, reshuffle_each_iteration=True)
    ds = ds.batch(variant.batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes)),
                num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        augment = augmenter(variant)
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)

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


def decode_pad_resize(jpeg: tf.Tensor, size: int, fast: bool = True, trim: bool = False) -> tf.Tensor:
    """JPEG bytes -> uint8 [size, size, 3]: decode, zero-pad to a centred square, resize (antialiased).

    With `fast`, libjpeg decodes at 1/2, 1/4 or 1/8 scale in the DCT domain when the result is still at least
    twice the target size, which skips most of the decoding work and loses nothing after the final resize.
    With `trim` (`predict`, never `prepare`), a uniform frame around the photo is cut off first: `trim_borders`.
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
    if trim:
        image = trim_borders(image)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.maximum(height, width)
    image = tf.image.pad_to_bounding_box(image, (side - height) // 2, (side - width) // 2, side, side)
    image = tf.image.resize(image, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


TRIM_TOLERANCE = 12  # mean |difference| over R, G, B (0..255) from the frame's colour: JPEG noise, not texture
TRIM_OUTLIERS = 0.02  # share of a frame line's pixels allowed beyond the tolerance (specks)
TRIM_SPREAD = 3  # a frame line's mean distance from its colour: a plain background's gradient or noise is more
TRIM_EDGE = 8  # lines past a frame where JPEG blurs frame into photo; cut while most pixels still match the frame
TRIM_MAX_SHARE = 0.25  # at most this share of the height (width) is cut from each side


def frame_lines(lines: tf.Tensor, colour: tf.Tensor, tolerance: float,
                outliers: float) -> tuple[tf.Tensor, tf.Tensor]:
    """For `lines` [N, L, 3]: (is each a frame line of `colour` [3], the share of its pixels off that colour).

    A frame line has all but an `outliers` share of its pixels within `tolerance` of the colour, and is on
    average within TRIM_SPREAD of it. Distances are means over R, G, B: JPEG blurs colour more than brightness.
    """
    distance = tf.reduce_mean(tf.abs(tf.cast(lines, tf.float32) - colour), -1)
    off = tf.reduce_mean(tf.cast(distance > tolerance, tf.float32), 1)
    return (off <= outliers) & (tf.reduce_mean(distance, 1) <= TRIM_SPREAD), off


def median_colour(line: tf.Tensor) -> tf.Tensor:
    """float32 [3]: the median of each channel along one line [L, 3]."""
    return tf.sort(tf.transpose(tf.cast(line, tf.float32)), axis=-1)[:, tf.shape(line)[0] // 2]


def frame_run(lines: tf.Tensor, tolerance: float, outliers: float) -> tuple[tf.Tensor, tf.Tensor]:
    """(number of leading frame lines, the frame's colour) of `lines` uint8 [N, L, 3], outermost line first.

    The colour is the outermost line's median. Past the last frame line, up to TRIM_EDGE lines where most pixels
    still match are the seam JPEG blurred between frame and photo, and are cut too.
    """
    colour = median_colour(lines[0])
    flat, off = frame_lines(lines, colour, tolerance, outliers)
    frame = tf.reduce_sum(tf.math.cumprod(tf.cast(flat, tf.int32)))
    seam = tf.reduce_sum(tf.math.cumprod(tf.cast(off <= 0.5, tf.int32)))
    return tf.where(frame > 0, tf.minimum(seam, frame + TRIM_EDGE), 0), colour


def trim_borders(image: tf.Tensor, tolerance: float = TRIM_TOLERANCE, max_share: float = TRIM_MAX_SHARE,
                 outliers: float = TRIM_OUTLIERS) -> tf.Tensor:
    """uint8 [H,W,3] -> the same image without the uniform frame a user's tool may have put around the photo.

    Training images are padded with black; a photo letterboxed with white bars or given a coloured border looks
    different to the model, so `predict` removes what it can see is a frame: on opposite sides (top and bottom,
    left and right), runs of near-constant lines of the same colour (`frame_run`). A real plain background has
    noise, a gradient or different colours at opposite edges, which stops the cut; `max_share` bounds the cut
    on each side whatever the image. All sides are measured on the untrimmed image. Most photos have no flat
    outermost line at all; for them only those four lines are read.
    """
    edges = (image[0], image[-1], image[:, 0], image[:, -1])
    maybe = tf.reduce_any([frame_lines(e[None], median_colour(e), tolerance, outliers)[0][0] for e in edges])
    return tf.cond(maybe, lambda: cut_frame(image, tolerance, max_share, outliers), lambda: image)


def cut_frame(image: tf.Tensor, tolerance: float, max_share: float, outliers: float) -> tf.Tensor:
    """`trim_borders`' cut, for an image with at least one flat outermost line."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    rows, cols = (tf.maximum(tf.cast(tf.cast(n, tf.float32) * max_share, tf.int32), 1) for n in (height, width))
    sides = (image[:rows], image[height - rows:][::-1],
             tf.transpose(image[:, :cols], [1, 0, 2]), tf.transpose(image[:, width - cols:], [1, 0, 2])[::-1])
    (top, c1), (bottom, c2), (left, c3), (right, c4) = (frame_run(s, tolerance, outliers) for s in sides)

    def pair(head, tail, c_head, c_tail, count):  # a frame has both sides, in one colour; else nothing is cut
        framed = (head > 0) & (tail > 0) & (tf.reduce_max(tf.abs(c_head - c_tail)) <= tolerance)
        framed &= head + tail < count  # a tiny image keeps at least a line
        return tf.where(framed, head, 0), tf.where(framed, tail, 0)

    (top, bottom), (left, right) = pair(top, bottom, c1, c2, height), pair(left, right, c3, c4, width)
    return image[top:height - bottom, left:width - right]


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


def augment_batch(images: tf.Tensor, seed: tf.Tensor, variant: Variant) -> tf.Tensor:
    """Random flip, rotation, zoom, crop and contrast, fused into ONE resampling pass.

    float32 [B,S,S,3] in, float32 [B,S,S,3] out. Each image's flip, rotation about the centre, zoom about the
    centre and random crop (resized back to S) are composed into one output->input affine map and applied by a
    single bilinear `ImageProjectiveTransformV3` with constant zero fill, instead of one resampling per layer
    (4 passes, the bulk of the input path's time at 224 px). The random draws are stateless, keyed by `seed`
    (int64 [2]), so the map runs in parallel and is reproducible under op determinism. The distributions are
    those of the Keras layers: flip p=0.5; angle U(-r, r) turns; zoom 1+U(-z, z) on both axes; crop of
    round(S*(1-crop)) px at a uniform offset inside the image; contrast factor U(1-c, 1+c) around each image's mean.
    """
    a, size = variant.augment, variant.image_size
    n = tf.shape(images)[0]
    centre = (size - 1) / 2.0
    ones, zeros = tf.ones([n]), tf.zeros([n])

    def uniform(i, low, high):
        return tf.random.stateless_uniform([n], seed=seed + [0, i], minval=low, maxval=high)

    def affine(a0, a1, a2, b0, b1, b2):  # [n,3,3]: (x_in, y_in, 1) = M @ (x_out, y_out, 1)
        return tf.stack([tf.stack([a0, a1, a2], -1), tf.stack([b0, b1, b2], -1),
                         tf.stack([zeros, zeros, ones], -1)], 1)

    matrix = tf.eye(3, batch_shape=[n])
    if a.crop:  # output pixel x -> input x * scale + offset: a window of `side` px, resized back to `size`
        side = round(size * (1 - a.crop))
        scale = side / size
        # The window's first sample lies at offset and its last at offset + (size - 1) * scale; both must be in
        # [0, size - 1], or the border pixels blend with the zero fill.
        low, high = 0.0, (size - 1) * (1 - scale)
        dx, dy = uniform(3, low, high), uniform(4, low, high)
        matrix = affine(ones * scale, zeros, dx, zeros, ones * scale, dy) @ matrix
    if a.zoom:
        z = 1.0 + uniform(2, -a.zoom, a.zoom)
        matrix = affine(z, zeros, centre * (1 - z), zeros, z, centre * (1 - z)) @ matrix
    if a.rotation:
        angle = uniform(1, -a.rotation * 2 * np.pi, a.rotation * 2 * np.pi)
        cos, sin = tf.cos(angle), tf.sin(angle)
        matrix = affine(cos, -sin, centre - centre * cos + centre * sin,
                        sin, cos, centre - centre * sin - centre * cos) @ matrix
    if a.flip:
        flip = tf.where(uniform(0, 0.0, 1.0) < 0.5, -1.0, 1.0)
        matrix = affine(flip, zeros, (1 - flip) * centre, zeros, ones, zeros) @ matrix
    if a.crop or a.zoom or a.rotation or a.flip:
        transforms = tf.reshape(matrix, [n, 9])[:, :8]
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=[size, size], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="CONSTANT")
    if a.contrast:
        factor = tf.reshape(uniform(5, 1 - a.contrast, 1 + a.contrast), [n, 1, 1, 1])
        mean = tf.reduce_mean(images, axis=(1, 2), keepdims=True)
        images = tf.clip_by_value((images - mean) * factor + mean, 0.0, 255.0)
    return images


def mixup(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Blend each image and its one-hot label with another of the batch, weight ~ Beta(alpha, alpha).

    Soft targets between classes regularise a small network trained on a few hundred photos. Stateless draws
    keyed by the batch seed, like `augment_batch`, so a rerun reproduces them.
    """
    n = tf.shape(images)[0]
    g1 = tf.random.stateless_gamma([n], seed=seed + [0, 7], alpha=alpha)
    g2 = tf.random.stateless_gamma([n], seed=seed + [0, 8], alpha=alpha)
    weight = g1 / (g1 + g2)
    partner = tf.random.experimental.stateless_shuffle(tf.range(n), seed=seed + [0, 9])
    w_images, w_labels = tf.reshape(weight, [-1, 1, 1, 1]), tf.reshape(weight, [-1, 1])
    return (w_images * images + (1 - w_images) * tf.gather(images, partner),
            w_labels * labels + (1 - w_labels) * tf.gather(labels, partner))


def augment_and_mix(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, variant: Variant,
                    num_classes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """One training batch: uint8 images and label indices in, augmented float images and (soft) one-hot out."""
    x = augment_batch(tf.cast(images, tf.float32), seed, variant)
    y = tf.one_hot(labels, num_classes)
    return mixup(x, y, seed, variant.augment.mixup) if variant.augment.mixup else (x, y)


def input_pipeline(images: np.ndarray, labels: np.ndarray, variant: Variant, training: bool,
                   num_classes: int = len(CLASSES)) -> tf.data.Dataset:
    """(float32 images 0..255, one-hot labels) batches. Training batches are shuffled and augmented, seeded.

    Images stay 0..255: the CNN standardises each image in its first layer, MobileNetV3 rescales by itself,
    so the saved model takes the same input `decode_pad_resize` produces.
    """
    # No .cache(): the arrays are already in memory, and caching them copied every image once more.
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if training:
        ds = ds.shuffle(len(images), seed=variant.seed, reshuffle_each_iteration=True)
    ds = ds.batch(variant.batch_size)
    if training:
        # one seed per batch, different every epoch, reproducible from variant.seed
        seeds = tf.data.Dataset.random(seed=variant.seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda xy, seed: augment_and_mix(xy[0], xy[1], seed, variant, num_classes),
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes)),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)

"""Images to tensors, once: `prepare` materialises uint8 tensors (stored as shards, `common.shards`); training
reads them with tf.data.

The seed's recipe -- class name to one-hot through a `tf.lookup` table, decode, pad to square keeping the
aspect ratio, resize -- runs here exactly once per image and size. `decode_pad_resize` is the single definition
of "what the model sees"; `predict` calls it too. Training batches leave
`input_pipeline` as uint8; standardisation lives in the model and augmentation in its training step
(`common.augment`), so the input path does no per-image work.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow as tf

from common.config import Variant

RATIOS = (8, 4, 2, 1)  # libjpeg's DCT-domain downscaling factors


def decode(jpeg: tf.Tensor, size: int, fast: bool = True) -> tf.Tensor:
    """JPEG bytes -> uint8 [h, w, 3]. With `fast`, libjpeg decodes at 1/2, 1/4 or 1/8 scale in the DCT domain when
    the result is still at least twice the target size, which skips most of the decoding work and loses nothing
    after the final resize."""
    if not fast:
        return tf.io.decode_jpeg(jpeg, channels=3)
    longest = tf.reduce_max(tf.io.extract_jpeg_shape(jpeg)[:2])
    branches = [lambda r=r: tf.io.decode_jpeg(jpeg, channels=3, ratio=r) for r in RATIOS]
    fits = tf.stack([longest // r >= 2 * size for r in RATIOS])
    index = tf.cast(tf.argmax(tf.cast(fits, tf.int32)), tf.int32)  # the largest ratio that still fits
    index = tf.where(tf.reduce_any(fits), index, len(RATIOS) - 1)
    return tf.switch_case(index, branches)


def decode_pad_resize_box(jpeg: tf.Tensor, size: int, fast: bool = True,
                          trim: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """`decode_pad_resize` and the photo's content box inside the padded square: float32 [y0, x0, y1, x1] in 0..1
    (frame-robust training varies what lies outside it). With `trim` (`predict`, never `prepare`), a uniform frame
    around the photo is cut off first: `trim_borders`."""
    image = decode(jpeg, size, fast)
    if trim:
        image = trim_borders(image)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.maximum(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    image = tf.image.pad_to_bounding_box(image, top, left, side, side)
    image = tf.image.resize(image, (size, size), antialias=True)
    box = tf.cast(tf.stack([top, left, top + height, left + width]), tf.float32) / tf.cast(side, tf.float32)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), box


def decode_pad_resize(jpeg: tf.Tensor, size: int, fast: bool = True, trim: bool = False) -> tf.Tensor:
    """JPEG bytes -> uint8 [size, size, 3]: decode, zero-pad to a centred square, resize (antialiased)."""
    return decode_pad_resize_box(jpeg, size, fast, trim)[0]


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


def class_table(classes) -> tf.lookup.StaticHashTable:
    """Class name -> label index (the dataset's classes in label order: no default, the classes come from the
    data or the spec), the seed's `tf.lookup` table; unknown names map to -1."""
    keys = tf.constant(list(classes))
    values = tf.range(len(classes), dtype=tf.int32)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1)


def photo_bytes(jpegs: Iterable[bytes] | list[str]) -> tf.data.Dataset:
    """JPEG bytes per photo, in order: a list of file paths is read by tf.data itself (in parallel, no Python per
    photo); any other iterable yields the bytes (a generator reading from a store), consumed lazily."""
    if isinstance(jpegs, list) and all(isinstance(j, str) for j in jpegs):
        return tf.data.Dataset.from_tensor_slices(tf.constant(jpegs, tf.string)).map(
            tf.io.read_file, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return tf.data.Dataset.from_generator(lambda: iter(jpegs), output_signature=tf.TensorSpec([], tf.string))


def materialise(jpegs: Iterable[bytes] | list[str], class_names: list[str], sizes: tuple[int, ...],
                fast: bool = True, *, classes,
                batch: int = 32) -> Iterator[tuple[np.ndarray, dict[int, tuple[np.ndarray, np.ndarray]]]]:
    """Decode, pad and resize photos in parallel with tf.data at every size of `sizes`, as a stream of batches in
    input order: (int32 labels [B], {size: (uint8 [B,S,S,3], float32 content boxes [B,4])}).

    Each photo is read once and decoded once per size (each size at its own DCT-domain scale, `decode`: the same
    pixels as a pass per size). `jpegs` (file paths, or bytes: `photo_bytes`) is read lazily, so memory holds a
    few batches whatever the number of photos (`prepare` writes each batch to its shards before the next).
    """
    table = class_table(classes)
    photos = photo_bytes(jpegs)
    names = tf.data.Dataset.from_tensor_slices(tf.constant(list(class_names), tf.string))
    ds = tf.data.Dataset.zip(photos, names).map(
        lambda jpeg, name: (table.lookup(name), tuple(decode_pad_resize_box(jpeg, s, fast) for s in sizes)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for y, per_size in ds.batch(batch).prefetch(4):
        yield y.numpy().astype(np.int32), {s: (x.numpy(), b.numpy()) for s, (x, b) in zip(sizes, per_size)}


def batches_per_epoch(n: int, variant: Variant) -> int:
    """Training batches per epoch: every image once, or the variant's `steps_per_epoch` cap."""
    batches = -(-n // variant.batch_size)
    return min(batches, variant.steps_per_epoch) if variant.steps_per_epoch else batches


def input_pipeline(images: np.ndarray, labels: np.ndarray, variant: Variant, training: bool,
                   first_epoch: int = 0, boxes: np.ndarray | None = None) -> tf.data.Dataset:
    """uint8 image batches and int32 label indices; no per-image work here (`augment.AugmentingTrainer` does it).

    Training: one stream of epochs `first_epoch`..`variant.epochs - 1`, each a permutation keyed to (seed,
    epoch) cut into `batches_per_epoch` batches -- so a run resumed at epoch k sees exactly the batches the
    uninterrupted run saw from epoch k on. Fit it with `steps_per_epoch=batches_per_epoch(...)`.
    With `boxes` (content boxes, for frame-robust augmentation) training batches are ((images, boxes), labels).
    Evaluation: the split in order.
    """
    labels = labels.astype(np.int32)
    if not training:
        ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(variant.batch_size)
        return ds.prefetch(tf.data.AUTOTUNE)
    n, batches = len(labels), batches_per_epoch(len(labels), variant)
    x, y = tf.constant(images), tf.constant(labels)  # captured by reference, not copied into the graph

    def one_epoch(epoch):
        key = tf.stack([tf.constant(variant.seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=key)
        return tf.data.Dataset.from_tensor_slices(order).batch(variant.batch_size).take(batches)

    ds = tf.data.Dataset.range(first_epoch, variant.epochs).flat_map(one_epoch)
    if boxes is None:
        return ds.map(lambda i: (tf.gather(x, i), tf.gather(y, i))).prefetch(tf.data.AUTOTUNE)
    b = tf.constant(boxes, tf.float32)
    return ds.map(lambda i: ((tf.gather(x, i), tf.gather(b, i)), tf.gather(y, i))).prefetch(tf.data.AUTOTUNE)

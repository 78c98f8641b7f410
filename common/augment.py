"""Augmentation inside the training step: batches arrive as uint8, everything random happens in the model.

`tf.data` only shuffles and batches the in-memory uint8 tensors (`pipeline.input_pipeline`); the cast, the
frame-robust refills, the fused flip/rotation/zoom/crop/contrast resample, mixup and the second frame view of
`augment.consistency` run in
`AugmentingTrainer.train_step`, in the same compiled step as the forward pass and on the same device: on a GPU
pod the host only copies uint8 batches. On a CPU the work per image is the same, but it no longer overlaps the
previous step as tf.data did (bench/RESULTS.md: 0.80-0.96x wall per step on the loaded 2-core machine).

Every random draw of a step -- augmentation, mixup and dropout -- is stateless and keyed to (variant seed,
optimizer step). The step counter is part of the checkpointed optimizer state and is a function of (epoch,
batch), so a run resumed after a kill draws exactly what the uninterrupted run drew.
The saved model is `trainer.net`, the plain inference model: it takes `decode_pad_resize` output as is.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from common.config import Variant
from common.errors import BadInput


def draw_seed(seed: tf.Tensor, stream: int) -> tf.Tensor:
    """An independent stateless seed per random stream, so streams of one step never share draws."""
    return tf.cast(tf.random.experimental.stateless_fold_in(seed, stream), tf.int64)


def step_seed(seed: int, step: tf.Tensor) -> tf.Tensor:
    """The key of one training step's draws: (variant seed, optimizer step)."""
    return tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])


def _uniform(n: tf.Tensor, seed: tf.Tensor, stream: int, low, high) -> tf.Tensor:
    return tf.random.stateless_uniform([n], seed=draw_seed(seed, stream), minval=low, maxval=high)


def _affine(a0, a1, a2, b0, b1, b2) -> tf.Tensor:
    """[n,3,3] output->input map: (x_in, y_in, 1) = M @ (x_out, y_out, 1)."""
    zeros, ones = tf.zeros_like(a0), tf.ones_like(a0)
    return tf.stack([tf.stack([a0, a1, a2], -1), tf.stack([b0, b1, b2], -1),
                     tf.stack([zeros, zeros, ones], -1)], 1)


def content_crop(n: tf.Tensor, seed: tf.Tensor, variant: Variant, boxes: tf.Tensor) -> tf.Tensor:
    """[n,3,3]: with probability `content_crop`, the output square -> the largest square inside the photo (its
    content box, at a uniform offset along the long side); otherwise the identity. Such images show no bars."""
    size, p = variant.image_size, variant.augment.content_crop
    px = boxes * size
    height, width = px[:, 2] - px[:, 0], px[:, 3] - px[:, 1]
    side = tf.minimum(height, width)
    chosen = _uniform(n, seed, 12, 0.0, 1.0) < p
    scale = tf.where(chosen, (side - 1) / (size - 1), 1.0)  # samples from the first to the last content pixel
    dy = tf.where(chosen, px[:, 0] + (height - side) * _uniform(n, seed, 10, 0.0, 1.0), 0.0)
    dx = tf.where(chosen, px[:, 1] + (width - side) * _uniform(n, seed, 11, 0.0, 1.0), 0.0)
    zeros = tf.zeros([n])
    return _affine(scale, zeros, dx, zeros, scale, dy)


def geometry(n: tf.Tensor, seed: tf.Tensor, variant: Variant, boxes: tf.Tensor | None = None) -> tf.Tensor:
    """Each image's crop, zoom, rotation and flip composed into one [n,3,3] affine map (output -> input).

    The distributions are those of the Keras layers: flip p=0.5; angle U(-r, r) turns; zoom 1+U(-z, z) on both
    axes; crop of round(S*(1-crop)) px at a uniform offset inside the image, resized back to S.
    """
    a, size = variant.augment, variant.image_size
    centre, ones, zeros = (size - 1) / 2.0, tf.ones([n]), tf.zeros([n])
    matrix = tf.eye(3, batch_shape=[n])
    if a.crop:  # output x -> input x * scale + offset; the window's first and last samples stay in the image
        scale = round(size * (1 - a.crop)) / size
        high = (size - 1) * (1 - scale)
        dx, dy = _uniform(n, seed, 3, 0.0, high), _uniform(n, seed, 4, 0.0, high)
        matrix = _affine(ones * scale, zeros, dx, zeros, ones * scale, dy) @ matrix
    if a.zoom:
        z = 1.0 + _uniform(n, seed, 2, -a.zoom, a.zoom)
        matrix = _affine(z, zeros, centre * (1 - z), zeros, z, centre * (1 - z)) @ matrix
    if a.rotation:
        angle = _uniform(n, seed, 1, -a.rotation * 2 * np.pi, a.rotation * 2 * np.pi)
        cos, sin = tf.cos(angle), tf.sin(angle)
        matrix = _affine(cos, -sin, centre - centre * cos + centre * sin,
                         sin, cos, centre - centre * sin - centre * cos) @ matrix
    if a.flip:
        flip = tf.where(_uniform(n, seed, 0, 0.0, 1.0) < 0.5, -1.0, 1.0)
        matrix = _affine(flip, zeros, (1 - flip) * centre, zeros, ones, zeros) @ matrix
    if a.content_crop:  # applied to the input side last: it picks the window of the photo the rest transforms
        matrix = content_crop(n, seed, variant, boxes) @ matrix
    return matrix


def _inside(boxes: tf.Tensor, size: int) -> tf.Tensor:
    """bool [n,S,S]: pixel centres inside each image's content box."""
    px, centres = boxes * size, tf.range(size, dtype=tf.float32) + 0.5
    rows = (centres[None] >= px[:, 0:1]) & (centres[None] <= px[:, 2:3])
    cols = (centres[None] >= px[:, 1:2]) & (centres[None] <= px[:, 3:4])
    return rows[:, :, None] & cols[:, None, :]


def _edge_fill(images: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
    """Each pixel outside the content box takes the nearest content pixel's value (edge replication)."""
    size = images.shape[1]
    px, index = boxes * size, tf.range(size)[None]
    low = tf.cast(tf.math.ceil(px[:, 0:2] - 0.5), tf.int32)
    high = tf.maximum(low, tf.cast(tf.math.floor(px[:, 2:4] - 0.5), tf.int32))
    rows = tf.minimum(tf.maximum(index, low[:, 0:1]), high[:, 0:1])  # [n,S]: the nearest content row
    cols = tf.minimum(tf.maximum(index, low[:, 1:2]), high[:, 1:2])
    return tf.gather(tf.gather(images, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)


# A refill's kind and its share: flat colours dominate, because that is how editors and phone apps letterbox.
FILLS = {"colour": 0.3, "grey": 0.3, "noise": 0.1, "edge": 0.15, "mean": 0.15}


def flat_level(shape, seed: tf.Tensor, stream: int) -> tf.Tensor:
    """Uniform 0..255 with a quarter of the draws exactly 0 and a quarter exactly 255: black and white bars, the
    commonest frames, are drawn often, not as the rare corners of a uniform cube."""
    u = tf.random.stateless_uniform(shape, seed=draw_seed(seed, stream), minval=-0.5, maxval=1.5)
    return 255.0 * tf.clip_by_value(u, 0.0, 1.0)


def refill_frame(images: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor, p: float) -> tf.Tensor:
    """With probability p per image, the pad bars get another fill (FILLS): a flat colour, a flat grey level
    (black and white included, `flat_level`), uniform noise, the edge pixels of the photo repeated, or the
    photo's mean colour -- so the model cannot learn `prepare`'s black bars. float32 [n,S,S,3] in and out."""
    n, size = tf.shape(images)[0], images.shape[1]
    inside = _inside(boxes, size)
    weight = tf.cast(inside, tf.float32)[..., None]
    mean = tf.reduce_sum(images * weight, (1, 2), keepdims=True) / tf.maximum(
        tf.reduce_sum(weight, (1, 2), keepdims=True), 1.0)
    colour = flat_level([n, 1, 1, 3], seed, 14)
    grey = tf.tile(flat_level([n, 1, 1, 1], seed, 20), [1, 1, 1, 3])
    noise = tf.random.stateless_uniform(tf.shape(images), seed=draw_seed(seed, 15), maxval=255.0)
    shape = tf.shape(images)
    fills = tf.stack([tf.broadcast_to(colour, shape), tf.broadcast_to(grey, shape), noise,
                      _edge_fill(images, boxes), tf.broadcast_to(mean, shape)], 1)
    logits = tf.math.log([list(FILLS.values())])
    kind = tf.random.stateless_categorical(tf.tile(logits, [n, 1]), 1, seed=draw_seed(seed, 13))[:, 0]
    fill = tf.gather(fills, kind, axis=1, batch_dims=1)
    replace = ~inside & (_uniform(n, seed, 16, 0.0, 1.0) < p)[:, None, None]
    return tf.where(replace[..., None], fill, images)


def add_border(images: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor, p: float) -> tf.Tensor:
    """With probability p per image, a border of one flat colour (`flat_level`), 1 px to 6 % of the side wide,
    on the photo's own edges (inside its content box), as a frame a user's tool puts round the photo."""
    n, size = tf.shape(images)[0], images.shape[1]
    width = 1.0 + tf.floor(_uniform(n, seed, 17, 0.0, 0.06 * size))[:, None, None]
    px, centres = boxes * size, tf.range(size, dtype=tf.float32) + 0.5
    rows = tf.minimum(centres[None] - px[:, 0:1], px[:, 2:3] - centres[None])[:, :, None]  # distance to the edge
    cols = tf.minimum(centres[None] - px[:, 1:2], px[:, 3:4] - centres[None])[:, None, :]
    on = _inside(boxes, size) & ((rows < width) | (cols < width))
    on &= (_uniform(n, seed, 18, 0.0, 1.0) < p)[:, None, None]
    colour = flat_level([n, 1, 1, 3], seed, 19)
    return tf.where(on[..., None], tf.broadcast_to(colour, tf.shape(images)), images)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, variant: Variant, boxes: tf.Tensor | None = None,
                  frame_seed: tf.Tensor | None = None) -> tf.Tensor:
    """Random frame refill, flip, rotation, zoom, crop, content crop, border and contrast; ONE resampling pass.

    float32 [B,S,S,3] in and out; `boxes` [B,4] (the content boxes `prepare` stores) for the frame options.
    The geometric transforms are one affine map per image applied by a single bilinear
    `ImageProjectiveTransformV3` instead of one resampling per Keras layer (TensorFlow has a GPU kernel for it);
    outside the image it fills zeros, or repeats the edge when frame refills are on (no black corners to learn).
    Contrast: factor U(1-c, 1+c) around each image's mean. `frame_seed` (default `seed`) keys the refill and the
    border alone: two calls that differ only in it frame the same crop of the photo differently.
    """
    a, size = variant.augment, variant.image_size
    n = tf.shape(images)[0]
    frame_seed = seed if frame_seed is None else frame_seed
    if a.frame:
        images = refill_frame(images, boxes, frame_seed, a.frame)
    if a.crop or a.zoom or a.rotation or a.flip or a.content_crop:
        transforms = tf.reshape(geometry(n, seed, variant, boxes), [n, 9])[:, :8]
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=[size, size], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="NEAREST" if a.frame else "CONSTANT")
    if a.border:
        images = add_border(images, boxes, frame_seed, a.border)
    if a.contrast:
        factor = tf.reshape(_uniform(n, seed, 5, 1 - a.contrast, 1 + a.contrast), [n, 1, 1, 1])
        mean = tf.reduce_mean(images, axis=(1, 2), keepdims=True)
        images = tf.clip_by_value((images - mean) * factor + mean, 0.0, 255.0)
    return images


def mixup(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Blend each image and its one-hot label with another of the batch, weight ~ Beta(alpha, alpha).

    Soft targets between classes regularise a small network trained on a few hundred photos.
    """
    n = tf.shape(images)[0]
    g1 = tf.random.stateless_gamma([n], seed=draw_seed(seed, 7), alpha=alpha)
    g2 = tf.random.stateless_gamma([n], seed=draw_seed(seed, 8), alpha=alpha)
    weight = g1 / (g1 + g2)
    partner = tf.random.experimental.stateless_shuffle(tf.range(n), seed=draw_seed(seed, 9))
    w_images, w_labels = tf.reshape(weight, [-1, 1, 1, 1]), tf.reshape(weight, [-1, 1])
    return (w_images * images + (1 - w_images) * tf.gather(images, partner),
            w_labels * labels + (1 - w_labels) * tf.gather(labels, partner))


def augment_and_mix(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, variant: Variant,
                    num_classes: int, boxes: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """One training batch: uint8 images and label indices in, augmented float images and (soft) one-hot out.

    With `augment.consistency` the batch is two views of the same photos stacked ([2B]): the same geometry,
    contrast and mixup partner, other frame draws (`consistency_loss` compares their answers)."""
    images = tf.cast(images, tf.float32)
    views = [augment_batch(images, seed, variant, boxes)]
    if variant.augment.consistency:
        views.append(augment_batch(images, seed, variant, boxes, frame_seed=draw_seed(seed, 300)))
    y = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
    if variant.augment.mixup:  # the same seed: each view is mixed with the same partner, by the same weight
        views, ys = zip(*(mixup(x, y, seed, variant.augment.mixup) for x in views))
        y = ys[0]
    return tf.concat(views, 0), tf.concat([y] * len(views), 0)


def consistency_loss(probs: tf.Tensor) -> tf.Tensor:
    """Mean Jensen-Shannon divergence between the answers on the two stacked views [2B,C] (AugMix's loss):
    zero only when a photo's answer does not depend on its frame."""
    a, b = tf.split(tf.cast(probs, tf.float32), 2)
    m = (a + b) / 2
    return tf.reduce_mean((keras.losses.kl_divergence(a, m) + keras.losses.kl_divergence(b, m)) / 2)


def train_boxes(split: dict, variant: Variant, where: str):
    """The content boxes the variant's frame options need, or None; BadInput for a store prepared before them."""
    if not variant.augment.uses_boxes:
        return None
    if "boxes" not in split:
        raise BadInput(f"{where} has no content boxes, which augment.frame/content_crop of variant {variant.name}"
                       f" need: rerun `aquarium prepare --force` (same zip) to store them")
    return split["boxes"]


def seed_states(model: keras.Model) -> list:
    """The state variables of the model's Keras SeedGenerators (dropout): not weights, so not checkpointed."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


class AugmentingTrainer(keras.Model):
    """Trains `net` on uint8 batches of (image, label index): augments and mixes (x, y) inside the step.

    Fit, evaluate and predict this wrapper; save `trainer.net`. Its weights are `net`'s, in the same order, so
    checkpoints and EarlyStopping's best weights are the net's own.
    """

    def __init__(self, net: keras.Model, variant: Variant, num_classes: int):
        super().__init__(name=f"{net.name}-trainer")
        self.net, self.variant, self.num_classes = net, variant, num_classes

    def call(self, images, training=False):
        if isinstance(images, (tuple, list)):  # training batches carry (images, content boxes)
            images = images[0]
        return self.net(tf.cast(images, tf.float32), training=training)

    def train_step(self, data):
        """Key this step's draws to (seed, step), reseed dropout, augment + mix, then Keras' own step."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, boxes = x if isinstance(x, (tuple, list)) else (x, None)
        seed = step_seed(self.variant.seed, self.optimizer.iterations)
        for i, state in enumerate(seed_states(self.net)):
            state.assign(draw_seed(seed, 100 + i))
        x, y = augment_and_mix(x, y, seed, self.variant, self.num_classes, boxes)
        if sample_weight is not None and self.variant.augment.consistency:  # one weight per view
            sample_weight = tf.concat([sample_weight, sample_weight], 0)
        return super().train_step((x, y, sample_weight))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras' loss, plus `augment.consistency` x the divergence between the two frame views in training."""
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if training and self.variant.augment.consistency:
            loss = loss + tf.cast(self.variant.augment.consistency * consistency_loss(y_pred), loss.dtype)
        return loss

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y = tf.one_hot(tf.cast(y, tf.int32), self.num_classes)
        return super().test_step((tf.cast(x, tf.float32), y, sample_weight))

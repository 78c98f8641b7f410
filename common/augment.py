"""Augmentation inside the training step: batches arrive as uint8, everything random happens in the model.

`tf.data` only shuffles and batches the in-memory uint8 tensors (`pipeline.input_pipeline`); the cast, the fused
flip/rotation/zoom/crop/contrast resample and mixup run in `AugmentingTrainer.train_step`, i.e. in the same
compiled step as the forward pass and on the same device -- on a GPU pod the host only copies uint8 batches,
on a CPU the work is the same but no longer competes with the model for the tf.data threads.

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


def geometry(n: tf.Tensor, seed: tf.Tensor, variant: Variant) -> tf.Tensor:
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
    return matrix


def augment_batch(images: tf.Tensor, seed: tf.Tensor, variant: Variant) -> tf.Tensor:
    """Random flip, rotation, zoom, crop and contrast, fused into ONE resampling pass.

    float32 [B,S,S,3] in and out. The geometric transforms are one affine map per image applied by a single
    bilinear `ImageProjectiveTransformV3` (zero fill) instead of one resampling per Keras layer; TensorFlow has
    a GPU kernel for it. Contrast: factor U(1-c, 1+c) around each image's mean.
    """
    a, size = variant.augment, variant.image_size
    n = tf.shape(images)[0]
    if a.crop or a.zoom or a.rotation or a.flip:
        transforms = tf.reshape(geometry(n, seed, variant), [n, 9])[:, :8]
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=[size, size], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="CONSTANT")
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
                    num_classes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """One training batch: uint8 images and label indices in, augmented float images and (soft) one-hot out."""
    x = augment_batch(tf.cast(images, tf.float32), seed, variant)
    y = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
    return mixup(x, y, seed, variant.augment.mixup) if variant.augment.mixup else (x, y)


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
        return self.net(tf.cast(images, tf.float32), training=training)

    def train_step(self, data):
        """Key this step's draws to (seed, step), reseed dropout, augment + mix, then Keras' own step."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        seed = step_seed(self.variant.seed, self.optimizer.iterations)
        for i, state in enumerate(seed_states(self.net)):
            state.assign(draw_seed(seed, 100 + i))
        x, y = augment_and_mix(x, y, seed, self.variant, self.num_classes)
        return super().train_step((x, y, sample_weight))

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y = tf.one_hot(tf.cast(y, tf.int32), self.num_classes)
        return super().test_step((tf.cast(x, tf.float32), y, sample_weight))

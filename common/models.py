"""The two model families of a sweep.

Both take float32 images in 0..255 exactly as `pipeline.decode_pad_resize` makes them, so a saved
`model.keras` needs no outside preprocessing: the CNN standardises each image in its first layer, and
Keras' MobileNetV3 rescales its input itself (it must not be fed standardised images).
"""

from __future__ import annotations

import functools
from pathlib import Path

import keras
import tensorflow as tf
from keras import layers, ops

from common.config import Variant


@keras.saving.register_keras_serializable(package="aquarium")
class Standardize(layers.Layer):
    """Per-image standardisation (mean 0, std 1), like tf.image.per_image_standardization, inside the model."""

    def call(self, x):
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        std = ops.std(x, axis=(1, 2, 3), keepdims=True)
        pixels = ops.cast(ops.prod(ops.shape(x)[1:]), x.dtype)
        return (x - mean) / ops.maximum(std, 1.0 / ops.sqrt(pixels))


@keras.saving.register_keras_serializable(package="aquarium")
class Mirror(layers.Layer):
    """The image mirrored left to right: the second view of test-time flip averaging."""

    def call(self, x):
        return ops.flip(x, axis=2)


def with_test_time_flip(net: keras.Model) -> keras.Model:
    """The mean of `net`'s answers on the image and its mirror image (test-time flip averaging).

    The training augmentation flips half the images, so both views are equally "seen"; averaging them removes
    the part of an answer that depends on which way the animal faces. Same input and weights as `net`, so
    the saved model stays one file `predict` loads like any other.
    """
    inputs = keras.Input(net.input_shape[1:], name="image")
    outputs = layers.Average(name="flip_average", dtype="float32")([net(inputs), net(Mirror(name="mirror")(inputs))])
    return keras.Model(inputs, outputs, name=net.name)


def inference_model(net: keras.Model, variant: Variant) -> keras.Model:
    """What a variant is evaluated and saved as: its net, flip-averaged when `test_time_flip` is set."""
    return with_test_time_flip(net) if variant.test_time_flip else net


@functools.cache
def cpu_has_bf16() -> bool:
    """AMX or AVX512-BF16: the CPUs where Keras' mixed_bfloat16 runs natively (faster than float32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str) -> str:
    """The Keras dtype policy of a variant's `precision`; `auto` picks the faster one for this machine.

    GPUs: bfloat16 from compute capability 8 (Ampere) on, float16 with loss scaling before. CPUs: bfloat16
    only with native support; emulated it is slower than float32 (bench/RESULTS.md).
    """
    if precision != "auto":
        return precision
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") or (0, 0)
        return "mixed_bfloat16" if tuple(capability) >= (8, 0) else "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def apply_precision(variant: Variant) -> str:
    """Set the global dtype policy before building a model: every layer built after it computes in it."""
    policy = resolve_precision(variant.precision)
    keras.config.set_dtype_policy(policy)
    return policy


def build_cnn(variant: Variant, num_classes: int) -> keras.Model:
    """The seed's from-scratch CNN: blocks of conv (+BN) + ReLU, max-pool after each block, dense head, softmax.

    Standardisation and the softmax layer stay float32 under a mixed policy (statistics over thousands of
    pixels and probabilities need the precision); the convolutions run in the policy's compute dtype.
    """
    apply_precision(variant)
    inputs = keras.Input((variant.image_size, variant.image_size, 3), name="image")
    if variant.input_norm == "image":
        x = Standardize(name="standardize", dtype="float32")(inputs)
    else:  # one fixed scale for every image: a frame adds bright or dark pixels but leaves the photo's values alone
        x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale", dtype="float32")(inputs)
    for i, filters in enumerate(variant.filters):
        x = layers.Conv2D(filters, variant.kernel_size, padding="same", use_bias=not variant.batch_norm,
                          name=f"conv{i + 1}")(x)
        if variant.batch_norm:
            x = layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = layers.ReLU(name=f"relu{i + 1}")(x)
        if (i + 1) % variant.convs_per_block == 0 or i + 1 == len(variant.filters):
            x = layers.MaxPooling2D(variant.pool_size, padding="same", name=f"pool{i + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x) if variant.global_pool else layers.Flatten(name="flatten")(x)
    if variant.dense_units:
        x = layers.Dropout(variant.dropout, name="dropout1")(x)
        x = layers.Dense(variant.dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(variant.dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=variant.name)


def build_finetune(variant: Variant, num_classes: int, weights: str | None) -> keras.Model:
    """MobileNetV3Large without its top, a new softmax head, only the last `trainable_layers` layers trainable.

    `weights` is 'imagenet' (Keras downloads it), None, or a local weights file (staged from the store).
    The backbone is called with training=False, so its BatchNorm layers stay in inference mode even where
    trainable -- fine-tuning on a few hundred images would otherwise wreck their statistics.
    """
    apply_precision(variant)
    size = variant.image_size
    backbone = keras.applications.MobileNetV3Large(
        input_shape=(size, size, 3), include_top=False, weights=weights, pooling="avg", include_preprocessing=True
    )
    trainable = len(backbone.layers) if variant.trainable_layers == "all" else variant.trainable_layers
    frozen = len(backbone.layers) - trainable
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= frozen
    inputs = keras.Input((size, size, 3), name="image")
    x = backbone(inputs, training=False)
    x = layers.Dropout(variant.dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=variant.name)


def compile_model(model: keras.Model, variant: Variant) -> keras.Model:
    """RMSprop and categorical cross-entropy, as in the seed (label smoothing optional); XLA if asked.

    Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer by itself.
    """
    model.compile(
        jit_compile=variant.jit_compile,
        optimizer=keras.optimizers.RMSprop(learning_rate=variant.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=variant.label_smoothing),
        metrics=["accuracy"],
    )
    return model

"""The two model families of a sweep.

Both take float32 images in 0..255 exactly as `pipeline.decode_pad_resize` makes them, so a saved
`model.keras` needs no outside preprocessing: the CNN standardises each image in its first layer, and
Keras' MobileNetV3 rescales its input itself (it must not be fed standardised images).
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import keras
import tensorflow as tf
from keras import layers, ops

from common.config import Variant
from common.errors import BadInput


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


PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@functools.cache
def cpu_has_bf16() -> bool:
    """AMX or AVX512-BF16: the CPUs where Keras' mixed_bfloat16 runs natively (faster than float32)."""
    return bool({"amx_bf16", "avx512_bf16"} & set(_cpu_flags()))


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])


@functools.cache
def device_kind() -> str:
    """The device a precision was resolved on, as a result records it: the GPU's name and compute capability,
    or the CPU's model and the instructions that decide bfloat16 speed (amx_bf16, avx512_bf16, avx2)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        capability = ".".join(map(str, details.get("compute_capability") or ())) or "?"
        return f"gpu: {details.get('device_name', 'GPU')} (compute capability {capability})"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    flags = [f for f in ("amx_bf16", "avx512_bf16", "avx2") if f in _cpu_flags()]
    return f"cpu: {model} ({', '.join(flags) or 'no avx2'})"


def resolve_precision(precision: str) -> str:
    """The Keras dtype policy of a variant's `precision`; `auto` means AQUARIUM_PRECISION when set, else
    bfloat16 on GPUs from compute capability 8 (Ampere), float16 with loss scaling on older GPUs, float32 on CPUs.

    CPUs get float32 even where they have bfloat16 instructions (AMX: a 64-px CNN epoch 1.67x faster): results
    must not depend on which CPU a machine happened to have -- the same spec and seed give the same history on
    every CPU -- and bfloat16's effect on accuracy is unmeasured here. Opt in with `precision: mixed_bfloat16`
    in the spec, or AQUARIUM_PRECISION=mixed_bfloat16 for every `auto` variant (README, *Precision*).
    """
    if precision != "auto":
        return precision
    chosen = os.environ.get("AQUARIUM_PRECISION", "auto")
    if chosen in PRECISIONS:
        return chosen
    if chosen != "auto":
        raise BadInput(f"AQUARIUM_PRECISION={chosen!r} is not a precision: use auto, {', '.join(PRECISIONS)}")
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") or (0, 0)
        return "mixed_bfloat16" if tuple(capability) >= (8, 0) else "mixed_float16"
    return "float32"


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


BACKBONES = {"large": keras.applications.MobileNetV3Large, "small": keras.applications.MobileNetV3Small}
# Keras' own ImageNet file names (what keras.applications downloads), and the project's shared Small file
IMAGENET_FILES = {
    "large": ("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",),
    "small": ("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", "mobilenet_v3_small_imagenet_no_top.weights.h5"),
}
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"


def backbone_model(variant: Variant, weights: str | None) -> keras.Model:
    """The variant's MobileNetV3 (`backbone`: large | small) without its top, globally average-pooled.

    `include_preprocessing` keeps the input 0..255: the model rescales to -1..1 itself, as ImageNet training did.
    """
    size = variant.image_size
    return BACKBONES[variant.backbone](input_shape=(size, size, 3), include_top=False, weights=weights,
                                      pooling="avg", include_preprocessing=True)


def build_finetune(variant: Variant, num_classes: int, weights: str | None,
                   trainable_layers: int | str | None = None) -> keras.Model:
    """MobileNetV3 without its top, a new softmax head, only the last `trainable_layers` backbone layers trainable
    (default: the variant's; 0 freezes the whole backbone, the first phase of `head_epochs`).

    `weights` is 'imagenet' (Keras downloads it), None, or a local weights file (`train.resolve_weights`).
    Every BatchNormalization layer stays frozen, so it normalises with its ImageNet statistics (inference mode)
    even inside the trainable layers: Keras 3 runs a layer with `trainable = False` in inference mode, while a
    nested `training=False` is overridden by fit's `training=True` (keras-team/keras#20285). Batch statistics of
    a few hundred photos would otherwise rewrite the moving statistics and wreck the pretrained features.
    """
    apply_precision(variant)
    backbone = backbone_model(variant, weights)
    trainable = variant.trainable_layers if trainable_layers is None else trainable_layers
    frozen = 0 if trainable == "all" else len(backbone.layers) - trainable
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= frozen and not isinstance(layer, layers.BatchNormalization)
    inputs = keras.Input((variant.image_size, variant.image_size, 3), name="image")
    x = backbone(inputs, training=False)
    x = layers.Dropout(variant.dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=variant.name)


def compile_model(model: keras.Model, variant: Variant, learning_rate: float | None = None) -> keras.Model:
    """The variant's optimizer (RMSprop, as in the seed, or Adam) and categorical cross-entropy (label smoothing
    optional); XLA if asked. `learning_rate`: a fine-tune's second phase passes its own.

    Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer by itself.
    """
    optimizer = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}[variant.optimizer]
    model.compile(
        jit_compile=variant.jit_compile,
        optimizer=optimizer(learning_rate=variant.learning_rate if learning_rate is None else learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=variant.label_smoothing),
        metrics=["accuracy"],
    )
    return model

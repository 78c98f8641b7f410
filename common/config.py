"""The sweep spec: one YAML file names the sweep, its dataset, its store and its variants.

Every variant is `defaults` deep-merged with the variant's own keys (and with `extends: OTHER`, OTHER's own keys
in between: `resolve_extends`), then validated strictly (unknown keys and
wrong types are errors, named with their place in the file). The resolved variant is hashed; the hash goes into
every artefact the variant writes, so a changed config is never mistaken for a finished one.

Command-line overrides are applied once, at the edge: `jobs/` calls `resolve(load_sweep(path), store=...)`,
which validates the result again, and the library reads only `sweep.*` from then on.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.errors import BadInput
from common.store import s3_endpoint

K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The aquarium dataset's classes in the seed's order: the reference data set (sweep.yaml and smoke.yaml list them
# as dataset.classes); the code itself takes the classes from the data or the spec, never from here.
CLASSES = ("fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray")


def k8s_name(limit: int) -> AfterValidator:
    """A name that becomes part of Kubernetes object names: DNS-label characters, at most `limit` of them."""
    def check(v: str) -> str:
        if not K8S_NAME.match(v) or len(v) > limit:
            raise ValueError(f"{v!r} is not a valid Kubernetes name: use lowercase letters, digits and '-', "
                             f"at most {limit}")
        return v

    return AfterValidator(check)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True)


class Augment(Strict):
    """On-the-fly augmentation of training batches (Keras preprocessing layers, seeded)."""

    flip: bool = True  # horizontal flip
    rotation: float = Field(0.05, ge=0, le=0.5)  # fraction of a full turn
    zoom: float = Field(0.1, ge=0, le=0.9)
    crop: float = Field(0.1, ge=0, lt=0.5)  # fraction trimmed before resizing back (random crop)
    contrast: float = Field(0.0, ge=0, le=0.9)
    mixup: float = Field(0.0, ge=0, le=1.0)  # Beta(alpha, alpha) of mixup; 0 = off
    # frame-robust (issue 13; needs the content boxes `prepare` stores): per-image probabilities of
    frame: float = Field(0.0, ge=0, le=1.0)  # refilling the pad bars: random colour, noise, edge or mean fill
    border: float = Field(0.0, ge=0, le=1.0)  # a flat-coloured border on the photo's edges, 1 px to 6 % of the side
    content_crop: float = Field(0.0, ge=0, le=1.0)  # a square crop inside the photo: no bars at all
    # weight of the frame-consistency loss: each photo is seen twice per step, same geometry, other frame draws,
    # and the Jensen-Shannon divergence of the two answers is added to the loss; 0 = off
    consistency: float = Field(0.0, ge=0)

    @property
    def uses_boxes(self) -> bool:
        return bool(self.frame or self.content_crop or self.border)

    @model_validator(mode="after")
    def _consistency_needs_frames(self):
        if self.consistency and not (self.frame or self.border):
            raise ValueError("consistency compares two frame draws of a photo: set frame or border above 0 too")
        return self


class Resources(Strict):
    """What one pod asks Kubernetes for."""

    gpu: int = Field(1, ge=0)
    cpu: str = "4"
    memory: str = "16Gi"
    ephemeral_storage: str | None = None  # Kubernetes ephemeral-storage request = limit (/tmp, logs); None: none


class Variant(Strict):
    """One model to train: a from-scratch CNN (`cnn`) or a MobileNetV3 fine-tune (`finetune`)."""

    name: Annotated[str, k8s_name(40)]
    kind: Literal["cnn", "finetune"] = "cnn"
    image_size: int = Field(64, ge=32, le=1024)
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(32, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)  # cap batches per epoch (smoke runs)
    # input (common/shards.py): a split of at most cache_mb MB of pixels is held in memory (each epoch an exact
    # permutation keyed to (seed, epoch)); a bigger one streams from its shards through a shuffle buffer of
    # shuffle_buffer photos, so memory does not grow with the dataset
    cache_mb: int = Field(128, ge=0)
    shuffle_buffer: int = Field(1024, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    lr_factor: float = Field(0.2, gt=0, lt=1)  # ReduceLROnPlateau
    lr_patience: int = Field(5, ge=0)
    min_lr: float = Field(1e-6, ge=0)
    early_stopping_patience: int = Field(15, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: bool = False  # weight the loss by inverse class frequency
    test_time_flip: bool = False  # evaluate and save the mean of the answers on the image and its mirror image
    seed: int = 1337
    augment: Augment = Augment()
    # auto = AQUARIUM_PRECISION when set, else mixed_bfloat16 on a GPU of compute capability >= 8, mixed_float16
    # on older GPUs, float32 on every CPU: the same results on any CPU (common/models.py: resolve_precision)
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = "auto"
    jit_compile: bool = False  # XLA: slower on CPU for these models (bench/RESULTS.md)
    # cnn
    # input scaling: per-image standardisation (the seed's) or one fixed scale to -1..1 (a frame's colour cannot
    # change how the photo itself is scaled)
    input_norm: Literal["image", "fixed"] = "image"
    conv_layers: int = Field(3, ge=3, le=8)
    filters: list[int] = [32, 64, 128]
    kernel_size: int = Field(3, ge=1, le=11)
    pool_size: int = Field(2, ge=1, le=4)
    convs_per_block: int = Field(1, ge=1, le=4)  # conv layers before each pooling (VGG-style blocks)
    batch_norm: bool = False
    global_pool: bool = False  # GlobalAveragePooling2D instead of Flatten before the head
    dropout: float = Field(0.3, ge=0, lt=1)
    dense_units: int = Field(128, ge=0)
    optimizer: Literal["rmsprop", "adam"] = "rmsprop"  # the seed's RMSprop; Adam for fine-tunes
    # finetune
    backbone: Literal["large", "small"] = "large"  # MobileNetV3Large or MobileNetV3Small
    weights: str = "imagenet"  # imagenet (Keras' download, or AQUARIUM_WEIGHTS) | none | a .weights.h5 path | s3://
    trainable_layers: Annotated[int, Field(ge=0)] | Literal["all"] = 20  # last N backbone layers, or all of them
    # the Keras transfer-learning recipe: first `head_epochs` with the whole backbone frozen (only the new head
    # learns, at learning_rate), then the last `trainable_layers` unfrozen at `finetune_learning_rate`
    # (default: learning_rate); 0 = one phase, trainable_layers unfrozen from the start
    head_epochs: int = Field(0, ge=0)
    finetune_learning_rate: float | None = Field(None, gt=0)
    resources: Resources = Resources()

    @field_validator("filters", mode="before")
    @classmethod
    def _filters(cls, v):
        return [v] if isinstance(v, int) else v

    @model_validator(mode="after")
    def _filters_match_layers(self):
        if len(self.filters) == 1:
            self.filters = self.filters * self.conv_layers
        if len(self.filters) != self.conv_layers:
            raise ValueError(f"filters has {len(self.filters)} entries but conv_layers is {self.conv_layers}")
        if self.head_epochs >= self.epochs:
            raise ValueError(f"head_epochs {self.head_epochs} leaves no fine-tuning epoch of the {self.epochs}: "
                             f"make it smaller than epochs")
        pools = -(-self.conv_layers // self.convs_per_block)
        if self.image_size // self.pool_size ** pools < 1 and self.kind == "cnn":
            raise ValueError(f"{pools} pooling layers of size {self.pool_size} shrink {self.image_size} px to nothing")
        return self

    @property
    def config_hash(self) -> str:
        """Short sha256 of the resolved config: changes whenever a setting that affects training changes.

        Only values that differ from the defaults count, so adding a new optional setting to the spec does not
        turn every finished result stale; `resources` (where it ran) does not count either.
        """
        data = self.model_dump(exclude={"resources"}, exclude_defaults=True)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def job(self) -> str:
        """The job that trains this variant (`aquarium <job>`)."""
        return "train-variant" if self.kind == "cnn" else "finetune-variant"


FORMATS = ("auto", "tfcsv", "coco", "yolo", "folders")  # export formats `prepare` reads (common/data/formats.py)


def class_name_problem(name) -> str | None:
    """Why a class name cannot be used (it becomes a store folder and a CSV column), or None."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        return f"class name {name!r} is empty or has surrounding spaces"
    if "/" in name or "\\" in name or name in (".", ".."):
        return f"class name {name!r} cannot be a folder name (no '/', '\\', '.' or '..')"
    return None


class Dataset(Strict):
    source: str  # local zip, file://, http(s)://, s3://bucket/key, Google Drive link or id
    sha256: str | None = None
    synthesize: bool = False
    prefix: str = "data"  # where `prepare` writes under the store
    # the class names in label order (also the tie order of the dominant-class rule and the report's order);
    # None: the sorted class names found in the training split
    classes: list[str] | None = None
    format: Literal[FORMATS] = "auto"  # auto: detected from the zip's content

    @field_validator("classes")
    @classmethod
    def _classes(cls, v):
        if v is None:
            return v
        for name in v:
            if problem := class_name_problem(name):
                raise ValueError(problem)
        dupes = sorted({c for c in v if v.count(c) > 1})
        if dupes:
            raise ValueError(f"class {dupes[0]!r} is listed twice: list each class once")
        if len(v) < 2:
            raise ValueError("a classifier needs at least two classes: list two or more, or leave classes out")
        return v


class Kubernetes(Strict):
    """How `aquarium sweep plan|submit` runs the sweep on a cluster (see k8s/ and common/k8s/)."""

    namespace: str = "default"
    image: str = "aquarium-sweep:latest"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str = "aquarium-sweep"  # the pods' identity (no API rights; k8s/rbac.yaml creates it)
    s3_secret: str | None = "aquarium-s3"  # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; None: IRSA etc.
    queue: str | None = None  # Kueue LocalQueue name
    node_selector: dict[str, str] = {}  # GPU variants only
    tolerations: list[dict] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]  # GPU only
    backoff_limit: int = Field(3, ge=0)
    active_deadline_seconds: int = Field(86400, ge=60)
    ttl_seconds_after_finished: int = Field(604800, ge=0)
    pending_timeout_seconds: int = Field(600, ge=10)
    termination_grace_seconds: int = Field(300, ge=30)  # time a variant gets after SIGTERM to checkpoint
    tmp_size_limit: str | None = "50Gi"  # emptyDir for /tmp (dataset zip, tensors, checkpoints)
    job_resources: Resources = Resources(gpu=0, cpu="2", memory="4Gi")  # prepare and aggregate
    poll_seconds: float = Field(10.0, gt=0)  # how often the submitter looks at the cluster
    pull_timeout_seconds: int = Field(600, ge=30)  # how long a failing image pull may retry before submit gives up
    cluster_assigns_uid: bool = False  # OpenShift restricted-v2 etc.: omit runAsUser/runAsGroup/fsGroup
    mount_service_account_token: bool = False  # IRSA / EKS Pod Identity need the pods' projected token


class Param(Strict):
    """One parameter of a search space: exactly one of a list of choices, a uniform or log-uniform float range, or
    an integer range (`int: [low, high]`, optional `step`)."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True, validate_default=True)

    choice: list | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = Field(None, alias="int")
    step: int = Field(1, ge=1)  # of an integer range

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in ("choice", "uniform", "loguniform", "int_range") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of choice, uniform, loguniform or int")
        low_high = self.uniform or self.loguniform or self.int_range
        if low_high and not low_high[0] < low_high[1]:
            raise ValueError(f"the range {list(low_high)} is empty: give [low, high] with low < high")
        if self.loguniform and self.loguniform[0] <= 0:
            raise ValueError("a loguniform range needs low > 0")
        return self


class EarlyStop(Strict):
    """Stopping trials early by epochs (Optuna's pruners): successive halving (asynchronous, ASHA) or Hyperband."""

    method: Literal["successive_halving", "hyperband"] = "successive_halving"
    min_epochs: int = Field(1, ge=1)  # the first rung
    reduction_factor: int = Field(3, ge=2)  # 1/reduction_factor of the trials go on at each rung


class Search(Strict):
    """A search: trials `<name>-<number>`, each the `base` variant with a point of the `space` (common/search.py)."""

    name: Annotated[str, k8s_name(36)]
    base: str | dict = {}  # variant keys (`extends: NAME` among them: over that variant), or a variant's name
    space: dict[str, Param] = Field(min_length=1)  # variant key (nested: `augment.frame`) -> its range
    sampler: Literal["grid", "random", "tpe"] = "tpe"
    trials: int | None = Field(None, ge=1)  # default: the grid's size (grid only)
    seed: int = 0
    max_parallel: int | None = Field(None, ge=1)  # trials running at once (the sweep's limit applies too)
    early_stopping: EarlyStop | Literal["none"] = "none"


class Sweep(Strict):
    name: Annotated[str, k8s_name(20)]
    dataset: Dataset
    store: str = "file://./store"
    endpoint: str | None = None  # S3 endpoint (MinIO); after `resolve`: the one in force (see store.s3_endpoint)
    max_parallel: int | None = Field(None, ge=1)
    ensemble_top_k: int = Field(0, ge=0)  # >= 2: a leaderboard row averaging the k best variants (common.ensemble)
    defaults: dict = {}
    variants: list[Variant]
    searches: list[Search] = []  # trials added while the sweep runs (common/search.py)
    kubernetes: Kubernetes = Kubernetes()

    @field_validator("variants")
    @classmethod
    def _unique(cls, v):
        names = [x.name for x in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate variant names: {', '.join(dupes)}")
        if not v:
            raise ValueError("a sweep needs at least one variant")
        return v

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise BadInput(f"variant {name!r} is not in sweep {self.name!r}; known: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    @property
    def image_sizes(self) -> list[int]:
        """Every input size `prepare` must write: the variants' and those any search's trials can have."""
        from common.search import trial_sizes

        return sorted({v.image_size for v in self.variants}.union(*(trial_sizes(self, s) for s in self.searches)))

    @property
    def prefix(self) -> str:
        """Store prefix of everything this sweep writes (besides the shared prepared dataset)."""
        return f"sweeps/{self.name}"

    def variant_prefix(self, name: str) -> str:
        return f"{self.prefix}/variants/{name}"


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _where(loc: tuple, raw: dict) -> str:
    """Name the place of a validation error the way a user finds it in the file: variants[2] 'cnn-b'.kernel_size."""
    parts = []
    for i, p in enumerate(loc):
        if isinstance(p, int):
            name = ""
            if i == 1 and loc[0] in ("variants", "searches") and p < len(raw.get(loc[0]) or []):
                item = raw[loc[0]][p]
                name = f" {item.get('name')!r}" if isinstance(item, dict) and "name" in item else ""
            parts[-1] += f"[{p}]{name}"
        else:
            parts.append(str(p))
    return ".".join(parts) or "(top level)"


def _one_line(err: ValidationError, raw: dict, path: str) -> str:
    e = err.errors()[0]
    where = _where(tuple(e["loc"]), raw)
    if e["type"] == "extra_forbidden":
        key = where.rsplit(".", 1)[-1]
        return f"{path}: unknown key {key!r} at {where}: remove it or check its spelling"
    msg = e["msg"].removeprefix("Value error, ")
    shown = repr(e["input"])  # a scalar the user wrote; never a whole resolved list or mapping
    got = f" (got {shown[:60]})" if e["type"] != "missing" and not isinstance(e["input"], (dict, list)) else ""
    return f"{path}: {where}: {msg}{got}"


def resolve_extends(variants: list, path: str) -> list:
    """Every variant with `extends: OTHER` replaced by OTHER's own keys deep-merged under its own (OTHER's
    `extends` followed first; its name never inherited), so a variant that differs from another in one key says
    only that key. Defaults are merged afterwards, under both; the result, and so the config hash, is what
    writing every key out would give. An unknown name or a cycle is one error line naming the place."""
    index = {v["name"]: i for i, v in reversed(list(enumerate(variants)))
             if isinstance(v, dict) and isinstance(v.get("name"), str)}

    def own(i: int, chain: tuple[str, ...]) -> dict:
        row = variants[i]
        mine = {k: v for k, v in row.items() if k != "extends"}
        if "extends" not in row:
            return mine
        parent, where = row["extends"], f"{path}: variants[{i}] {row['name']!r}.extends"
        if not isinstance(parent, str) or parent not in index:
            known = ", ".join(n for n in index if n != row["name"])
            raise BadInput(f"{where}: no variant named {parent!r} in this spec: extend one of {known}")
        if parent in chain:
            cycle = " -> ".join(chain[chain.index(parent):] + (parent,))
            raise BadInput(f"{where}: {cycle} is a cycle: let one of them list its keys instead of extending")
        inherited = {k: v for k, v in own(index[parent], chain + (parent,)).items() if k != "name"}
        return deep_merge(inherited, mine)

    out = []
    for i, v in enumerate(variants):
        named = isinstance(v, dict) and isinstance(v.get("name"), str)
        if isinstance(v, dict) and "extends" in v and not named:
            raise BadInput(f"{path}: variants[{i}] extends {v['extends']!r} but has no name: give it one")
        out.append(own(i, (v["name"],)) if named else v)
    return out


def parse_sweep(raw, path: str = "sweep.yaml") -> Sweep:
    """Validate a parsed YAML document; every variant gets the defaults merged in first."""
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: a sweep spec must be a mapping with name, dataset and variants")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise BadInput(f"{path}: defaults must be a mapping of variant keys")
    unknown = sorted(set(defaults) - set(Variant.model_fields) - {"name"})
    if unknown or "name" in defaults:
        bad = unknown[0] if unknown else "name"
        raise BadInput(f"{path}: unknown key {bad!r} at defaults.{bad}: defaults take variant keys except name")
    resolved = dict(raw)
    variants = raw.get("variants")
    if isinstance(variants, list):
        variants = resolve_extends(variants, path)
        resolved["variants"] = [deep_merge(defaults, v) if isinstance(v, dict) else v for v in variants]
    try:
        sweep = Sweep.model_validate(resolved)
    except ValidationError as err:
        raise BadInput(_one_line(err, raw, path)) from None
    too_long = [v.name for v in sweep.variants if len(f"{sweep.name}-{v.name}") > 52]
    if too_long:
        raise BadInput(f"{path}: job name {sweep.name}-{too_long[0]} is over 52 characters: shorten the names")
    if sweep.searches:
        from common.search import check_searches  # Optuna loads only for a spec with searches

        check_searches(sweep, path)
    return sweep


def reject_duplicate_keys(node, path: str, where: str = "") -> None:
    """YAML forbids a key twice in one mapping, but PyYAML keeps the last silently: a spec with `epochs` twice
    would train with whichever came last. Refuse it, naming the key, its place and both lines."""
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            reject_duplicate_keys(item, path, f"{where}[{i}]")
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key, value in node.value:
        name = str(key.value) if isinstance(key, yaml.ScalarNode) else None
        place = f"{where}.{name}" if where else str(name)
        if name is not None and name != "<<":  # `<<` is YAML's merge key, not a key of its own
            if name in seen:
                raise BadInput(f"{path}: duplicate key {name!r} at {place} (lines {seen[name]} and "
                               f"{key.start_mark.line + 1}): a key may appear once; keep the one you mean")
            seen[name] = key.start_mark.line + 1
        reject_duplicate_keys(value, path, place)


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep YAML file (safe loading only; a key given twice is an error)."""
    path = Path(path)
    try:
        text = path.read_text()
        reject_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), str(path))
        raw = yaml.safe_load(text)
    except FileNotFoundError:
        raise BadInput(f"sweep spec {path} not found: pass --config PATH to an existing YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise BadInput(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    return parse_sweep(raw, str(path))


def only_given(**options) -> dict:
    """The options the command line actually set (None: not given; '' and False are real values)."""
    return {k: v for k, v in options.items() if v is not None}


def resolve(sweep: Sweep, *, store: str | None = None, endpoint: str | None = None, source: str | None = None,
            sha256: str | None = None, synthesize: bool | None = None, prefix: str | None = None,
            format: str | None = None, image: str | None = None, namespace: str | None = None,
            poll_seconds: int | None = None, pull_timeout: int | None = None) -> Sweep:
    """The sweep with the command line's overrides applied (None: not given) and the S3 endpoint decided
    (`store.s3_endpoint`), validated again -- pydantic's model_copy(update=...) would skip validation.

    The one place where a command-line value meets the spec; afterwards the library reads `sweep.store`,
    `sweep.endpoint`, `sweep.dataset.*` and `sweep.kubernetes.image/namespace` only."""
    data = sweep.model_dump()
    data.update(only_given(store=store), endpoint=s3_endpoint(endpoint, sweep.endpoint))
    data["dataset"].update(only_given(source=source, sha256=sha256, synthesize=synthesize, prefix=prefix,
                                      format=format))
    data["kubernetes"].update(only_given(image=image, namespace=namespace, poll_seconds=poll_seconds,
                                         pull_timeout_seconds=pull_timeout))
    try:
        return Sweep.model_validate(data)
    except ValidationError as err:
        raise BadInput(_one_line(err, data, "command line")) from None

"""TensorFlow SavedModel export with jax2tf.

Layout of an export directory ``out_dir``::

    out_dir/
      saved_model.pb, variables/, ...   a TF SavedModel
      jaxseg_export.json                what to feed it (see `export_saved_model`)

Signatures (all take ``image`` float32 ``[b, *patch, C]`` with a polymorphic batch
``b`` and return ``{"probabilities": float32 [b, *patch, K]}``):

- ``serving_default``: the first requested platform;
- ``serving_<platform>``: one per platform, written only when more than one platform is
  requested.

Each signature is its own jax2tf conversion (native serialisation, lowered for exactly one
platform) and all of them read the SAME ``tf.Variable``s held by one ``tf.Module``, so the
weights are stored once. One conversion per platform is what lets a platform use code
that cannot be lowered for the others (a Pallas TPU kernel cannot be lowered for CPU):
pass ``apply_fn`` as a mapping ``{platform: fn}`` to give each platform its own function
over the same parameters.

The export is written into a hidden temporary sibling of ``out_dir`` and renamed into
place only once complete, so an interrupted or failed export never leaves a half-written
model and never damages the export already at ``out_dir``.

TensorFlow and jax2tf are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxseg.errors import JaxsegError

METADATA_FILENAME = "jaxseg_export.json"
FORMAT_NAME = "jaxseg-saved-model"
FORMAT_VERSION = 1
SUPPORTED_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
# The second output of a model with a case-classification head: [b, C] softmax per window.
CLASS_OUTPUT_NAME = "class_probabilities"
SEGMENT_SIGNATURE = "segment"

ApplyFn = Callable[[Any, jax.Array], jax.Array]


# --------------------------------------------------------------------------- validation


def _check_patch_size(patch_size) -> tuple[int, ...]:
    try:
        patch = tuple(patch_size)
    except TypeError:
        patch = None
    if (
        patch is None
        or len(patch) not in (2, 3)
        or not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in patch)
        or not all(p > 0 for p in patch)
    ):
        raise JaxsegError(
            f"export: patch_size={patch_size!r} is not valid; give 2 or 3 positive integers, "
            "e.g. patch_size=(128, 128) for 2D or (96, 96, 96) for 3D."
        )
    return tuple(int(p) for p in patch)


def _check_positive_int(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise JaxsegError(f"export: {name}={value!r} is not valid; give a positive integer.")
    return int(value)


def _check_platforms(platforms) -> tuple[str, ...]:
    if isinstance(platforms, str):
        platforms = (platforms,)
    platforms = tuple(platforms)
    bad = [p for p in platforms if p not in SUPPORTED_PLATFORMS]
    if not platforms or bad:
        raise JaxsegError(
            f"export: platforms={platforms!r} is not valid; give a non-empty sequence drawn "
            f"from {SUPPORTED_PLATFORMS}, e.g. platforms=('cpu',) or ('cpu', 'tpu')."
        )
    if len(set(platforms)) != len(platforms):
        raise JaxsegError(
            f"export: platforms={platforms!r} names a platform twice; list each once."
        )
    return platforms


def _apply_fns_by_platform(apply_fn, platforms: tuple[str, ...]) -> dict[str, ApplyFn]:
    if isinstance(apply_fn, Mapping):
        keys = set(apply_fn)
        if keys != set(platforms):
            raise JaxsegError(
                f"export: apply_fn is a mapping with platforms {sorted(keys)} but "
                f"platforms={platforms!r}; give exactly one function per exported platform."
            )
        fns = dict(apply_fn)
    else:
        fns = {p: apply_fn for p in platforms}
    for p, fn in fns.items():
        if not callable(fn):
            raise JaxsegError(f"export: apply_fn for platform {p!r} is not callable: {fn!r}.")
    return fns


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _check_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise JaxsegError(
            f"export: metadata must be a dict (e.g. model name, class names, normalisation), "
            f"got {type(metadata).__name__}."
        )
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise JaxsegError(f"export: metadata key {key!r} is not a string; use string keys.")
        try:
            json.dumps(value, default=_json_default, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise JaxsegError(
                f"export: metadata[{key!r}] cannot be written as JSON ({e}); use numbers, "
                "strings, booleans, lists and dicts (no NaN or infinity)."
            ) from None
    # Round trip so the dict returned by load_saved_model equals what is written.
    return json.loads(json.dumps(dict(metadata), default=_json_default, allow_nan=False))


def _flatten_params(params):
    """Leaves as numpy arrays, the treedef, and a TF-friendly name per leaf."""
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not leaves_with_path:
        raise JaxsegError("export: params has no arrays; pass the trained parameters.")
    arrays, names = [], []
    for path, leaf in leaves_with_path:
        arr = np.asarray(jax.device_get(leaf))
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == jnp.bfloat16):
            raise JaxsegError(
                f"export: parameter {name!r} has dtype {arr.dtype}; parameters must be numeric arrays."
            )
        safe = "".join(c if c.isalnum() or c in "_.-/" else "_" for c in name) or "param"
        if not safe[0].isalnum() and safe[0] != ".":
            safe = "p" + safe
        arrays.append(arr)
        names.append(safe)
    return arrays, treedef, names


def _output_shape(fn: ApplyFn, params, patch: tuple[int, ...], in_channels: int, platform: str):
    """Trace ``fn`` (no compilation) at batch 1 and 2; return the batch-1 output struct.

    Tracing at batch 2 as well catches functions that hard-code the batch size: jax2tf
    would export those with a hidden ``b == 1`` shape assertion that fails only at serving.
    """
    p = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), params)
    shape_txt = ", ".join(map(str, patch))
    result = None
    for b in (1, 2):
        x = jax.ShapeDtypeStruct((b, *patch, in_channels), jnp.float32)
        try:
            out = jax.eval_shape(fn, p, x)
            classes = None
            if isinstance(out, tuple) and len(out) == 2:  # (probabilities, class probabilities)
                out, classes = out
        except Exception as e:  # add a hint, keep the original error and traceback
            e.add_note(
                f"jaxseg.export: tracing apply_fn for platform {platform!r} on an image "
                f"[{b}, {shape_txt}, {in_channels}] failed. Check patch_size and in_channels, and "
                "that the function works for any batch size (use x.shape[0], not a constant)."
            )
            raise
        if (
            not isinstance(out, jax.ShapeDtypeStruct)
            or len(out.shape) != len(patch) + 2
            or tuple(out.shape[:-1]) != (b, *patch)
        ):
            got = getattr(out, "shape", type(out).__name__)
            raise JaxsegError(
                f"export: apply_fn for platform {platform!r} maps an image [{b}, {shape_txt}, "
                f"{in_channels}] to {got}; it must return one array of probabilities "
                f"[{b}, {shape_txt}, K] for any batch size. Check patch_size and in_channels."
            )
        if classes is not None and (
            not isinstance(classes, jax.ShapeDtypeStruct)
            or len(classes.shape) != 2
            or classes.shape[0] != b
        ):
            raise JaxsegError(
                f"export: apply_fn for platform {platform!r} returns class probabilities "
                f"{getattr(classes, 'shape', classes)}; they must be [{b}, C]."
            )
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise JaxsegError(
                f"export: apply_fn for platform {platform!r} returns dtype {out.dtype}; it must "
                "return floating-point probabilities (compose model.apply with a softmax)."
            )
        if b == 1:
            result = out if classes is None else (out, classes)
    return result


# --------------------------------------------------------------------------- export


def export_saved_model(
    apply_fn: ApplyFn | Mapping[str, ApplyFn],
    params,
    out_dir,
    *,
    patch_size: Sequence[int],
    in_channels: int,
    num_classes: int | None = None,
    platforms: Sequence[str] = ("cpu",),
    metadata: Mapping[str, Any] | None = None,
    segment_fn: Callable[[Any, jax.Array], dict] | None = None,
    target_spacing: Sequence[float] | None = None,
) -> epath.Path:
    """Export ``apply_fn(params, image)`` as a TensorFlow SavedModel.

    Args:
      apply_fn: ``apply_fn(params, x f32 [b, *patch, C]) -> probabilities [b, *patch, K]``
        (or, for a model with a classification head, ``(probabilities, class probabilities
        [b, C])``: the signature then has a second output ``class_probabilities``),
        a pure JAX function (e.g. ``lambda p, x: jax.nn.softmax(model.apply({"params": p},
        x), -1)``); it must not depend on the concrete batch size. Or a mapping
        ``{platform: fn}`` with one function per entry of ``platforms``, all over the same
        ``params`` (e.g. a TPU function that calls Pallas kernels).
      params: the parameter pytree; stored as ``tf.Variable``s shared by all signatures.
      out_dir: the SavedModel directory to write. If it already holds an export it is
        replaced, but only after the new export is complete. A non-empty directory that is
        not a SavedModel is never replaced.
      patch_size: spatial input shape, 2 or 3 ints.
      in_channels: C.
      num_classes: K; inferred from ``apply_fn`` when None, checked when given.
      platforms: platforms to lower for, from ``("cpu", "cuda", "rocm", "tpu")``.
        ``serving_default`` serves the first; with more than one, ``serving_<platform>`` is
        written for each. Lowering for a platform needs no such device on this machine.
      metadata: JSON-serialisable dict stored under ``"metadata"`` in
        ``jaxseg_export.json`` (model name, class names, normalisation, ...).
      segment_fn: optional ``segment_fn(params, image [*S, C]) -> {"labels": [*S],
        "probabilities": [*S, K]}`` with symbolic spatial sizes (``jaxseg.export.pipeline``),
        exported as the ``segment`` signature for the first platform: inputs ``image``
        float32 ``[*S, C]`` (any spatial size, canonical voxel order) and ``spacing``
        float32 ``[dims]`` (mm); a wrong channel count, or a spacing other than
        ``target_spacing`` (when given), raises a TensorFlow InvalidArgumentError that
        says what is expected.

    Returns:
      ``out_dir`` as an ``etils.epath.Path`` (a local folder or a ``gs://`` URI).

    Outputs are cast to float32 if ``apply_fn`` returns another floating dtype.
    ``jaxseg_export.json`` holds: format, format_version, dims, patch_size, in_channels,
    num_classes, platforms, signatures ({key: platform}), input/output name, shape and
    dtype (batch as null), versions, and the caller's metadata.
    """
    patch = _check_patch_size(patch_size)
    in_channels = _check_positive_int("in_channels", in_channels)
    if num_classes is not None:
        num_classes = _check_positive_int("num_classes", num_classes)
    platforms = _check_platforms(platforms)
    fns = _apply_fns_by_platform(apply_fn, platforms)
    user_metadata = _check_metadata(metadata)

    out_dir = _as_path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise JaxsegError(
            f"export: {out_dir} exists and is not a directory; choose another output path."
        )
    # Only a previous jaxseg export (its metadata file) may be replaced: another tool's
    # SavedModel in the folder would be deleted with it (jaxseg.data.outputs.check_export_dir).
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / METADATA_FILENAME).exists():
        raise JaxsegError(
            f"export: {out_dir} is a non-empty directory that is not a SavedModel written by "
            f"jaxseg (no {METADATA_FILENAME}); refusing to replace it. Choose another output "
            "path or remove it."
        )

    arrays, treedef, names = _flatten_params(params)
    params_np = jax.tree_util.tree_unflatten(treedef, arrays)

    # Check shapes before any expensive conversion; infer K.
    out_shapes = {p: _output_shape(fns[p], params_np, patch, in_channels, p) for p in platforms}
    # A model with a class head returns (probabilities, class probabilities [b, C]).
    class_counts = {
        p: int(s[1].shape[-1]) if isinstance(s, tuple) else None for p, s in out_shapes.items()
    }
    if len(set(class_counts.values())) != 1:
        raise JaxsegError(
            f"export: the per-platform apply_fns disagree on class outputs: {class_counts}."
        )
    num_case_classes = next(iter(class_counts.values()))
    out_shapes = {p: s[0] if isinstance(s, tuple) else s for p, s in out_shapes.items()}
    ks = {p: int(s.shape[-1]) for p, s in out_shapes.items()}
    if len(set(ks.values())) != 1:
        raise JaxsegError(
            f"export: the per-platform apply_fns disagree on the number of classes: {ks}."
        )
    k = next(iter(ks.values()))
    if num_classes is not None and num_classes != k:
        raise JaxsegError(
            f"export: num_classes={num_classes} but apply_fn returns {k} channels; pass the "
            "model's number of classes (background included)."
        )

    import tensorflow as tf  # slow import: keep it out of module import time
    from jax.experimental import jax2tf

    module = tf.Module()
    with tf.name_scope("params"):
        module.params = [
            tf.Variable(a, trainable=False, name=n) for a, n in zip(arrays, names, strict=True)
        ]

    image_spec = tf.TensorSpec([None, *patch, in_channels], tf.float32, name=INPUT_NAME)
    batch_poly = f"(b, {', '.join(str(s) for s in patch)}, {in_channels})"

    def make_serving_fn(platform: str):
        fn = fns[platform]

        def fn_f32(p, x):
            out = fn(p, x)
            if num_case_classes is None:
                return jnp.asarray(out, jnp.float32)
            return tuple(jnp.asarray(o, jnp.float32) for o in out)

        converted = jax2tf.convert(
            fn_f32,
            polymorphic_shapes=[None, batch_poly],
            with_gradient=False,
            native_serialization_platforms=(platform,),
        )

        @tf.function(input_signature=[image_spec], autograph=False)
        def serve(image):
            p = jax.tree_util.tree_unflatten(treedef, list(module.params))
            out = converted(p, image)
            if num_case_classes is None:
                return {OUTPUT_NAME: out}
            return {OUTPUT_NAME: out[0], CLASS_OUTPUT_NAME: out[1]}

        try:
            return serve.get_concrete_function()
        except Exception as e:  # add a hint, keep the original error and traceback
            e.add_note(
                f"jaxseg.export: converting apply_fn for platform {platform!r} with a "
                f"polymorphic batch {batch_poly} failed. The function must not depend on the "
                "concrete batch size (use x.shape[0] rather than a constant in reshapes)."
            )
            raise

    per_platform = {p: make_serving_fn(p) for p in platforms}
    signatures = {"serving_default": per_platform[platforms[0]]}
    signature_platforms = {"serving_default": platforms[0]}
    if segment_fn is not None:
        signatures[SEGMENT_SIGNATURE] = _segment_signature(
            segment_fn, module, treedef, len(patch), in_channels, target_spacing, platforms[0]
        )
        signature_platforms[SEGMENT_SIGNATURE] = platforms[0]
    if len(platforms) > 1:
        for p in platforms:
            signatures[f"serving_{p}"] = per_platform[p]
            signature_platforms[f"serving_{p}"] = p

    import jaxseg

    export_info = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "dims": len(patch),
        "patch_size": list(patch),
        "in_channels": in_channels,
        "num_classes": k,
        "platforms": list(platforms),
        "signatures": signature_platforms,
        "input": {"name": INPUT_NAME, "shape": [None, *patch, in_channels], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": [None, *patch, k], "dtype": "float32"},
        **(
            {}
            if num_case_classes is None
            else {
                "class_output": {
                    "name": CLASS_OUTPUT_NAME,
                    "shape": [None, num_case_classes],
                    "dtype": "float32",
                }
            }
        ),
        "versions": {
            "jaxseg": jaxseg.__version__,
            "jax": jax.__version__,
            "tensorflow": tf.__version__,
        },
        "metadata": user_metadata,
    }

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_dir = out_dir.parent / f".{out_dir.name}.tmp-{token}"
    try:
        tf.saved_model.save(module, str(tmp_dir), signatures=signatures)
        with (tmp_dir / METADATA_FILENAME).open("w") as f:
            json.dump(export_info, f, indent=2)
            f.write("\n")
            if hasattr(f, "fileno"):  # a local file: on disk before the rename publishes it
                f.flush()
                os.fsync(f.fileno())
        _replace_dir(tmp_dir, out_dir, token)
    finally:
        if tmp_dir.exists():
            tmp_dir.rmtree(missing_ok=True)
    return out_dir


def _segment_signature(segment_fn, module, treedef, dims, in_channels, target_spacing, platform):
    """The `segment` concrete function: shape checks in TensorFlow, then the converted
    JAX pipeline over the module's shared variables."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    poly = "(" + ", ".join(f"s{i}" for i in range(dims)) + f", {in_channels})"
    converted = jax2tf.convert(
        segment_fn,
        polymorphic_shapes=[None, poly],
        with_gradient=False,
        native_serialization_platforms=(platform,),
    )
    specs = [
        tf.TensorSpec([None] * dims + [None], tf.float32, name=INPUT_NAME),
        tf.TensorSpec([dims], tf.float32, name="spacing"),
    ]

    @tf.function(input_signature=specs, autograph=False)
    def segment(image, spacing):
        checks = [
            tf.debugging.assert_equal(
                tf.shape(image)[-1],
                in_channels,
                message=f"segment: image must be [*spatial, {in_channels}] "
                f"(the model takes {in_channels} channel(s), channels last)",
            )
        ]
        if target_spacing is not None:
            checks.append(
                tf.debugging.assert_near(
                    spacing,
                    tf.constant([float(v) for v in target_spacing], tf.float32),
                    rtol=1e-3,
                    atol=1e-6,
                    message=f"segment: the model runs at spacing {list(target_spacing)} mm; "
                    "resample the image to it first",
                )
            )
        with tf.control_dependencies(checks):
            image = tf.ensure_shape(tf.identity(image), [None] * dims + [in_channels])
        out = converted(jax.tree_util.tree_unflatten(treedef, list(module.params)), image)
        return {"labels": out["labels"], "probabilities": out["probabilities"]}

    return segment.get_concrete_function()


def _as_path(path) -> epath.Path:
    """An epath (local paths expanded and made absolute; `gs://` URIs as they are)."""
    text = str(path)
    if text.startswith(("gs://", "s3://")):
        return epath.Path(text)
    return epath.Path(os.path.expanduser(text)).absolute()


def _replace_dir(new: epath.Path, target: epath.Path, token: str) -> None:
    """Move the complete directory ``new`` to ``target``, replacing any previous one.

    Linux cannot rename a directory over a non-empty one, so the old export is first moved
    aside, and moved back if the second rename fails.
    """
    if not target.exists():
        new.rename(target)
        return
    old = target.parent / f".{target.name}.old-{token}"
    target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        old.rename(target)
        raise
    old.rmtree(missing_ok=True)


# --------------------------------------------------------------------------- loading


def read_export_metadata(path) -> dict:
    """The contents of ``path/jaxseg_export.json``, without loading TensorFlow."""
    path = _as_path(path)
    meta_path = path / METADATA_FILENAME
    if not meta_path.is_file():
        raise JaxsegError(
            f"{meta_path} not found: {path} is not a jaxseg export. Export the model with "
            "jaxseg.export.export_saved_model (python -m jaxseg.export)."
        )
    try:
        with meta_path.open() as f:
            info = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise JaxsegError(
            f"{meta_path} cannot be read as JSON ({e}); re-export the model."
        ) from None
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        raise JaxsegError(f"{meta_path} is not a jaxseg export description; re-export the model.")
    if info.get("format_version") != FORMAT_VERSION:
        raise JaxsegError(
            f"{meta_path} has format_version {info.get('format_version')!r}; this jaxseg reads "
            f"version {FORMAT_VERSION}. Re-export the model with this version of jaxseg."
        )
    return info


def load_saved_model(path):
    """Load an export written by `export_saved_model`.

    Returns:
      ``(loaded, info)``: the object from ``tf.saved_model.load`` (call
      ``loaded.signatures["serving_default"](image=x)["probabilities"]``) and the dict in
      ``jaxseg_export.json`` (the caller's metadata is ``info["metadata"]``).
    """
    path = _as_path(path)
    if not (path / "saved_model.pb").is_file():
        raise JaxsegError(
            f"{path} holds no saved_model.pb; give the directory written by the export."
        )
    info = read_export_metadata(path)

    import tensorflow as tf

    return tf.saved_model.load(str(path)), info

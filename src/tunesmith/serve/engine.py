"""The transformers engine: one base model in memory, LoRA adapters attached to it with peft, switched per request.

Adapters share the base weights (peft load_adapter / set_adapter / delete_adapter), so each one costs
only its LoRA matrices. Generation goes through tunesmith.eval.generate, the same code eval used,
so a served answer is the answer eval recorded. Only the batching worker thread generates; adding
or removing an adapter takes the same lock, so an adapter never changes under a running batch.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith import models
from tunesmith.errors import ModelError
from tunesmith.eval import generate
from tunesmith.eval.generate import prompt_text
from tunesmith.eval.stream import generate_stream
from tunesmith.loader import load_target, run_thinking
from tunesmith.run import is_run_dir, load_run
from tunesmith.serve.security import check_adapter_files, check_name


class NoSuchModel(ModelError):
    """No served model has this name (never had it, or its adapter was removed)."""


@dataclass
class ServedModel:
    """A name clients can put in `model`: the base, or an adapter with its lineage."""

    name: str
    peft_name: str | None  # None for the base
    base: str
    run: str | None = None
    data: dict[str, str] = field(default_factory=dict)
    template_sha256: str | None = None
    template_warning: str | None = None
    rag: Any = None  # the run recipe's RagSection, when it trained with retrieval
    recipe: Any = None
    thinking: bool | None = None  # the run's thinking mode (Manifest.family): prompts are rendered in it

    @property
    def data_hash(self) -> str | None:
        """The training data's SHA-256 (one file), or a SHA-256 over the sorted per-file hashes."""
        if not self.data:
            return None
        if len(self.data) == 1:
            return next(iter(self.data.values()))
        return hashlib.sha256("".join(sorted(self.data.values())).encode()).hexdigest()

    def lineage(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "run": self.run,
            "data_hash": self.data_hash,
            "data": self.data,
            "chat_template_sha256": self.template_sha256,
        }


def model_name(spec: str) -> str:
    """A client-facing name for a base model spec (catalog name, folder or hub id)."""
    name = Path(spec.rstrip("/")).name if ("/" in spec and Path(spec).exists()) or spec.startswith((".", "/", "~")) else spec
    return name.replace("/", "--")


def _forget_adapters(base: Any) -> None:
    """Drop the `peft_config` dict peft leaves on a base model it wrapped: peft reads it as adapters still attached
    (and merges the next adapter's config into it), so a base given back by unload or a failed load must not keep it."""
    if "peft_config" in vars(base):
        del base.peft_config


class Engine:
    """Base model + tokenizer + named adapters. `generate_batch` / `stream` run one request group."""

    kind = "transformers"

    def __init__(self, model: Any, tokenizer: Any, base_name: str, base_path: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.base_path = base_path
        self.lock = threading.RLock()
        self.models: dict[str, ServedModel] = {base_name: ServedModel(base_name, None, base_name)}
        self.base_name = base_name
        self.default_name = base_name
        self._counter = 0
        # A fast tokenizer keeps padding state on its Rust object: request threads counting tokens must not
        # share it with the worker's padded batch encoding, so counting uses its own copy and lock.
        self._count_tokenizer = copy.deepcopy(tokenizer)
        self._count_lock = threading.Lock()
        config = getattr(model, "config", None)
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or tokenizer.model_max_length)

    # -- adapters ---------------------------------------------------------------------------------
    def _template_hash(self) -> str:

        return models.chat_template_hash(self.tokenizer)

    def _served_from_run(self, name: str, peft_name: str | None, run: Any) -> ServedModel:
        now = self._template_hash()
        warning = None
        if run.template_hash != now:
            warning = (
                f"chat template differs from training ({now[:12]} != {run.template_hash[:12]}): "
                "the adapter may look like it has no effect"
            )
        return ServedModel(
            name,
            peft_name,
            self.base_name,
            str(run.dir),
            dict(run.manifest.data),
            run.template_hash,
            warning,
            getattr(run.recipe, "rag", None),
            run.recipe,
            run_thinking(run),
        )

    def add_adapter(self, name: str, path: str | Path) -> ServedModel:
        """Attach a run's adapter (or a bare adapter folder) under `name`; ModelError if it does not fit this base.

        The files are checked before the model is touched, and a load that fails half-way is undone, so a refused
        adapter leaves the served models exactly as they were.
        """
        check_name(name)
        path = Path(path)
        with self.lock:
            if name in self.models:
                raise ModelError(f"a model named {name!r} is already served", hint="Remove it first or pick another name.")
            run = load_run(path) if is_run_dir(path) else None
            adapter_dir = run.adapter_dir if run is not None else path
            check_adapter_files(adapter_dir)
            if (
                run is not None
                and Path(run.base_path).resolve() != Path(self.base_path).resolve()
                and run.base_path != self.base_path
            ):
                raise ModelError(f"adapter {name!r} was trained on {run.base_path}, not on the served base {self.base_path}")
            self._counter += 1
            peft_name = f"adapter{self._counter}"  # peft names become module keys: no dots allowed there
            self._attach(adapter_dir, peft_name)
            served = (
                self._served_from_run(name, peft_name, run) if run is not None else ServedModel(name, peft_name, self.base_name)
            )
            self.models[name] = served
            return served

    def _attach(self, adapter_dir: Path, peft_name: str) -> None:
        from peft import PeftModel

        wrapped = isinstance(self.model, PeftModel)
        try:
            if wrapped:
                self.model.load_adapter(str(adapter_dir), adapter_name=peft_name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=peft_name).eval()
        except Exception as exc:  # peft and torch raise many types for weights that do not fit (shapes, names)
            self._undo_attach(peft_name, wrapped)
            raise ModelError(
                f"cannot attach the adapter at {adapter_dir}: {type(exc).__name__}: {exc}",
                hint="Is it a LoRA adapter trained on this base model?",
            ) from None

    def _undo_attach(self, peft_name: str, wrapped: bool) -> None:
        """Remove what a failed load left in the model: the half-added adapter, or LoRA layers peft injected."""
        if wrapped:
            if peft_name in self.model.peft_config:
                self.model.delete_adapter(peft_name)
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        # PeftModel.from_pretrained injects LoRA layers into the base before loading weights; swap each back.
        for parent in list(self.model.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, BaseTunerLayer):
                    setattr(parent, child_name, child.get_base_layer())
        _forget_adapters(self.model)

    def remove_adapter(self, name: str) -> None:
        with self.lock:
            served = self.models.get(name)
            if served is None or served.peft_name is None:
                raise ModelError(f"no adapter named {name!r}")
            if set(self.model.peft_config) == {served.peft_name}:
                # peft cannot disable its last adapter once deleted: strip the LoRA layers, keep the plain base.
                self.model = self.model.unload()
                _forget_adapters(self.model)
            else:
                self.model.delete_adapter(served.peft_name)
            del self.models[name]
            if self.default_name == name:
                self.default_name = self.base_name

    def resolve(self, name: str | None) -> ServedModel:
        """The served model called `name` (None: the default one); NoSuchModel when there is none."""
        served = self.models.get(name or self.default_name)
        if served is None:
            raise NoSuchModel(f"no served model named {name!r}")
        return served

    @contextmanager
    def activate(self, name: str) -> Iterator[ServedModel]:
        """Hold the model lock with `name` in force: its adapter set, or every adapter disabled for the base."""
        with self.lock:
            served = self.resolve(name)
            if served.peft_name is None:
                ctx = self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else nullcontext()
                with ctx:
                    yield served
            else:
                self.model.set_adapter(served.peft_name)
                yield served

    # -- generation -------------------------------------------------------------------------------
    def prompt(self, name: str | None, conversation: list[dict[str, Any]], tools: list[Any] | None = None) -> str:
        """The prompt text served model `name` is sent: the one render (eval.generate.prompt_text), in its run's
        thinking mode, with the tools the request offers."""
        thinking = self.resolve(name).thinking
        with self._count_lock:
            return prompt_text(self.model, self._count_tokenizer, conversation, thinking, tools)

    def prompt_tokens(self, conversation: list[dict[str, Any]], name: str | None = None, tools: list[Any] | None = None) -> int:
        text = self.prompt(name, conversation, tools)
        with self._count_lock:
            return len(self._count_tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate_batch(
        self, name: str, conversations: list[list[dict[str, Any]]], params: Any, tools: list[Any] | None = None
    ) -> list[Any]:
        """Completions (tunesmith.eval.generate.Completion) for one group sharing model and sampling parameters;
        tools: per conversation, the tools its request offers."""
        with self.activate(name) as served:
            return generate.generate_detailed(
                self.model,
                self.tokenizer,
                conversations,
                params.max_tokens,
                batch_size=len(conversations),
                temperature=params.temperature,
                top_p=params.top_p,
                seed=params.seed,
                stop=list(params.stop) or None,
                thinking=served.thinking,
                tools=tools,
            )

    def stream(
        self, name: str, conversation: list[dict[str, Any]], params: Any, cancel: threading.Event, timeout_s: float
    ) -> Iterator[tuple[str, Any]]:
        """Yield (delta, TextStream) pieces of one streamed completion, holding the model for its duration."""
        with self.activate(name) as served:
            ts = generate_stream(
                self.model,
                self.tokenizer,
                conversation,
                params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=params.seed,
                stop=list(params.stop) or None,
                cancel=cancel,
                timeout_s=timeout_s,
                thinking=served.thinking,
            )
            for delta in ts:
                yield delta, ts
            yield "", ts


def run_name(run: Any, name: str | None, has_adapter: bool) -> str:
    """The name a served run answers to (`name`, else its folder's); ModelError when an adapter run's name is its
    base's, since clients asking for the base would then get the adapter."""
    served = check_name(name or run.dir.name)
    if has_adapter and served == model_name(run.manifest.base_model.spec):
        raise ModelError(
            f"the run {run.dir} would be served as {served!r}, the name of its base model, so clients asking for "
            "the base would get the adapter",
            hint="Serve it under another name: tunesmith serve RUN --name NAME.",
        )
    return served


def load_engine(
    target: str | Path, adapters: dict[str, str] | None = None, dtype: str = "auto", name: str | None = None
) -> Engine:
    """The served engine: a run folder (its base + adapter) or a model, plus adapters; `name` renames the run or model.

    A full fine-tune is served under the run's name as its own base (adapters trained on the original base do not
    fit it). ModelError when the run's name is the base's: clients asking for the base would get the tuned model.
    """
    loaded = load_target(target, dtype)
    if loaded.run is not None:
        run = loaded.run
        served_name = run_name(run, name, loaded.has_adapter)
        if loaded.has_adapter:
            base_name = model_name(run.manifest.base_model.spec)
            engine = Engine(loaded.model, loaded.tokenizer, base_name, run.base_path)
            engine.models[served_name] = engine._served_from_run(served_name, "default", run)  # load_run_model: "default"
            engine.default_name = served_name
        else:
            engine = Engine(loaded.model, loaded.tokenizer, served_name, str(run.adapter_dir))
            engine.models[served_name] = engine._served_from_run(served_name, None, run)
    else:
        spec = str(target)
        local = Path(spec).expanduser()  # resolved as load_target did, so adapters' recorded base paths compare equal
        base = models.resolve_base(str(local) if local.exists() else spec)
        engine = Engine(loaded.model, loaded.tokenizer, check_name(name) if name else model_name(spec), base)
    for adapter, path in (adapters or {}).items():
        engine.add_adapter(adapter, path)
    return engine

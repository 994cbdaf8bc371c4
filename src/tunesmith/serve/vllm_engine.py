"""The vLLM engine (GPU, optional extra `tunesmith[vllm]`): the same base + LoRA adapters, the same API and metrics.

Prompts are rendered by tunesmith.eval.generate.prompt_text (the run's thinking mode), as for the transformers
engine; generation stops on the chat family's stop tokens; and
adapters are vLLM LoRARequests on one base. vLLM's offline LLM generates a whole group at once, so a
streamed request receives its answer as one delta (time to first token = total latency).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from tunesmith import families, models
from tunesmith.errors import ModelError
from tunesmith.eval.generate import Completion, FinishReason, opens_trace, prompt_text, raw_completion
from tunesmith.loader import resolve_run_base, run_thinking
from tunesmith.run import is_run_dir, load_run
from tunesmith.serve.engine import Engine, ServedModel, model_name, run_name


def require_vllm() -> None:
    """ModelError with the install line when vLLM (or CUDA) is missing."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ModelError(
            "--engine vllm needs the vllm package",
            hint="pip install 'tunesmith[vllm]' on a CUDA machine, or use the default engine.",
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise ModelError("--engine vllm needs a CUDA GPU", hint="Use the default transformers engine on this machine.")


class VllmEngine(Engine):
    kind = "vllm"

    def __init__(self, llm: Any, tokenizer: Any, base_name: str, base_path: str) -> None:
        super().__init__(llm, tokenizer, base_name, base_path)
        self.context_length = int(llm.llm_engine.model_config.max_model_len)
        self._loras: dict[str, Any] = {}

    def _attach(self, adapter_dir: Path, peft_name: str) -> None:
        from vllm.lora.request import LoRARequest

        self._loras[peft_name] = LoRARequest(peft_name, len(self._loras) + 1, str(adapter_dir))

    def remove_adapter(self, name: str) -> None:
        with self.lock:
            served = self.models.get(name)
            if served is None or served.peft_name is None:
                raise ModelError(f"no adapter named {name!r}")
            lora = self._loras.pop(served.peft_name, None)
            if lora is not None:
                self.model.llm_engine.remove_lora(lora.lora_int_id)
            del self.models[name]
            if self.default_name == name:
                self.default_name = self.base_name

    def generate_batch(
        self, name: str, conversations: list[list[dict[str, Any]]], params: Any, tools: list[Any] | None = None
    ) -> list[Any]:
        from vllm import SamplingParams

        family = families.for_tokenizer(self.tokenizer)
        with self.lock:
            served = self.resolve(name)
            lora = self._loras.get(served.peft_name) if served.peft_name else None
            sampling = SamplingParams(
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                stop=list(params.stop) or None,
                stop_token_ids=family.stop_token_ids(self.tokenizer),  # the family's, as the transformers engine
                seed=params.seed,
            )
            # The same render as the transformers engine (and training): the run's thinking mode.
            offered = tools or [None] * len(conversations)
            prompts = [prompt_text(None, self.tokenizer, c, served.thinking, t) for c, t in zip(conversations, offered)]
            outs = self.model.generate(prompts, sampling, lora_request=lora, use_tqdm=False)
        result = []
        for prompt, out in zip(prompts, outs):
            gen = out.outputs[0]
            reason: FinishReason = "length" if gen.finish_reason == "length" else "stop"
            opened = opens_trace(prompt, family)
            ids = list(gen.token_ids)
            raw = raw_completion(self.tokenizer, ids, set(family.stop_token_ids(self.tokenizer))).strip()
            n = len(out.prompt_token_ids)
            result.append(Completion(gen.text.strip(), n, len(ids), reason, ids, opened, family.think, raw))
        return result

    def stream(
        self, name: str, conversation: list[dict[str, Any]], params: Any, cancel: threading.Event, timeout_s: float
    ) -> Any:
        done = self.generate_batch(name, [conversation], params)[0]

        class _Finished:  # what the batcher reads off a finished stream
            completion_tokens, finish_reason = done.completion_tokens, done.finish_reason

        yield done.text, _Finished
        yield "", _Finished


def load_vllm_engine(
    target: str | Path, adapters: dict[str, str] | None = None, dtype: str = "auto", name: str | None = None
) -> VllmEngine:
    """The vLLM engine for a run folder (base + its adapter) or a model, plus more adapters on the same base.

    `name` renames the run (or model); an adapter run named like its base is refused (see engine.run_name)."""
    require_vllm()
    from vllm import LLM

    run = load_run(target) if is_run_dir(target) else None
    if run is not None and (run.adapter_dir / "adapter_config.json").exists():
        base_path, base_name = resolve_run_base(run), model_name(run.manifest.base_model.spec)
        tokenizer_dir = str(run.adapter_dir)
    elif run is not None:  # a full fine-tune is served as its own model, under the run's name (not the base's)
        base_path = tokenizer_dir = str(run.adapter_dir)
        base_name = run_name(run, name, False)
    else:
        local = Path(str(target)).expanduser()
        base_path = tokenizer_dir = models.resolve_base(str(local) if local.exists() else str(target))
        base_name = name or model_name(str(target))
    trust = bool(run and run.recipe.model.trust_remote_code)  # only when the run recorded it
    llm = LLM(
        model=base_path,
        tokenizer=tokenizer_dir,
        dtype=dtype,
        enable_lora=True,
        max_loras=8,
        max_lora_rank=64,
        trust_remote_code=trust,
    )
    engine = VllmEngine(llm, models.load_tokenizer(tokenizer_dir), base_name, base_path)
    if run is not None and (run.adapter_dir / "adapter_config.json").exists():
        served = engine.add_adapter(run_name(run, name, True), run.dir)
        engine.default_name = served.name
    elif run is not None:
        engine.models[base_name] = ServedModel(
            base_name, None, base_name, str(run.dir), dict(run.manifest.data), thinking=run_thinking(run)
        )
    for adapter, path in (adapters or {}).items():
        engine.add_adapter(adapter, path)
    return engine

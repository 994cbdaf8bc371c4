"""Peak training memory from the model's config.json: weights, adapter, optimizer, gradients, activations, logits.

All figures are bytes. The activation constants are per token per decoder layer and were calibrated against
measured peaks of SmolLM2-135M on CPU (docs/planner.md keeps the table); treat the estimate as +-25%.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "nf4": 0.5 + 0.5 / 64 * 4 / 4}  # nf4: 4 bits + fp32 absmax per 64


class ConfigError(ModelError, ValueError):
    """A config.json the planner cannot read. Also a ValueError: training treats it as "no plan", and trains on."""


REQUIRED = ("num_hidden_layers", "hidden_size", "vocab_size", "num_attention_heads")


def _read_config(p: Path) -> dict[str, Any]:
    path = p / "config.json" if p.is_dir() else p
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no config.json", hint="Give a model folder (it holds config.json).") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{path} is not a readable config.json: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} is not a model config (a JSON object)")
    return config


def _positive(c: dict[str, Any], key: str, default: int) -> int:
    """An optional integer field; absent, null or not a positive integer: the default."""
    value = c.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


@dataclass(frozen=True)
class Shape:
    """What the estimate needs from a decoder-only transformer's config.json."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, path: str | Path) -> Shape:
        """Read config.json from a model folder (or the file itself): a decoder with Llama-style field names
        (Llama, Qwen, Mistral, Gemma, SmolLM...). Anything else is a ModelError naming the missing fields."""
        c = _read_config(Path(path))
        if isinstance(c.get("text_config"), dict):
            c = c["text_config"]
        missing = [k for k in REQUIRED if not (isinstance(c.get(k), int) and c[k] > 0)]
        if missing:
            raise ConfigError(
                f"{path}: config.json ({c.get('model_type', 'unknown model type')}) lacks positive integer "
                f"{', '.join(missing)}: the planner reads Llama-style decoder configs",
                hint="Plan with a Llama-style base (Llama, Qwen, Mistral, Gemma, SmolLM), or measure a short run.",
            )
        heads = c["num_attention_heads"]
        return cls(
            layers=c["num_hidden_layers"],
            hidden=c["hidden_size"],
            intermediate=_positive(c, "intermediate_size", 4 * c["hidden_size"]),
            vocab=c["vocab_size"],
            heads=heads,
            kv_heads=_positive(c, "num_key_value_heads", heads),
            head_dim=_positive(c, "head_dim", c["hidden_size"] // heads),
            tied=bool(c.get("tie_word_embeddings", False)),
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear in one decoder layer (Llama/Qwen/Mistral naming)."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def params(self) -> int:
        """All parameters: embeddings, layers (with norms), final norm, untied LM head."""
        per_layer = sum(a * b for a, b in self.linears().values()) + 2 * self.hidden
        head = 0 if self.tied else self.vocab * self.hidden
        return self.vocab * self.hidden + self.layers * per_layer + self.hidden + head

    def lora_params(self, r: int, targets: list[str] | str = "all-linear") -> int:
        names = self.linears() if targets == "all-linear" else {k: v for k, v in self.linears().items() if k in targets}
        return self.layers * sum(r * (a + b) for a, b in names.values())


@dataclass
class Memory:
    """Estimated peak, in bytes, by component."""

    weights: float
    adapter: float
    optimizer: float
    gradients: float
    activations: float
    logits: float
    runtime: float  # the process itself (CPU: python + torch + libraries) or the CUDA context
    heap: float = 0.0  # CPU bf16 runs: heap oneDNN's bf16 matmuls leave resident after the first dozen steps

    @property
    def total(self) -> float:
        return float(sum(asdict(self).values()))

    def as_mb(self) -> dict[str, float]:
        return {**{k: round(v / 2**20, 1) for k, v in asdict(self).items()}, "total": round(self.total / 2**20, 1)}


# Saved activations per token per layer, in units of (hidden, intermediate) elements, for a LoRA-trained
# Llama block in eager/sdpa: norms, q/k/v/o inputs and outputs, rotary copies, MLP gate/up/act/product and
# the LoRA inputs. Fitted on SmolLM2-135M (CPU, fp32); checkpointing keeps only each layer's input.
ACT_HIDDEN, ACT_INTER = 14, 5
RUNTIME_CPU, RUNTIME_CUDA = 700 * 2**20, 600 * 2**20
LOGIT_CHUNK = 4096  # rows of the vocabulary projection alive at once with the chunked (labelled-only) head


def estimate(
    shape: Shape,
    *,
    adapter: str = "lora",
    r: int = 16,
    targets: list[str] | str = "all-linear",
    dtype: str = "float32",
    batch: int = 4,
    seq_len: int = 512,
    checkpointing: bool = False,
    labelled_logits: bool = True,
    trained_fraction: float = 1.0,
    cuda: bool = False,
    autocast: bool = False,
    trimmed: bool = True,
    frozen_bf16: bool = False,
) -> Memory:
    """Peak memory of one training step. seq_len: tokens per row (the padded length, or the mean with packing).

    trimmed: freed heap is handed back after every step (speed.release_memory), which only CPU runs count.
    frozen_bf16: the decoder's linear layers stored in bf16 under fp32 training (speed.frozen_bf16).
    """
    wbytes = BYTES["nf4"] if adapter == "qlora" else BYTES[dtype]
    act_bytes: float = 2 if dtype in ("bfloat16", "float16") or adapter == "qlora" or autocast else 4
    if autocast and not cuda:
        # Measured on CPU (docs/planner.md): under bf16 autocast the norms still keep fp32 tensors, and the allocator
        # keeps freed blocks between steps of different lengths. With speed.release_memory trimming them after each
        # step, 2.5 bytes per element is 2-4% under the demo set's peak and 11-21% over the long-row set's; without
        # it, 3 bytes (-14% and +3% on the same sets).
        act_bytes = 2.5 if trimmed else 3
    trainable: float
    if adapter == "full":
        trainable = shape.params
    elif adapter == "prompt_tuning":
        trainable = 20 * shape.hidden
    else:
        trainable = shape.lora_params(r, targets) * (1.02 if adapter == "dora" else 1)
    tokens = batch * seq_len
    per_layer = tokens * (ACT_HIDDEN * shape.hidden + ACT_INTER * shape.intermediate) * act_bytes
    if checkpointing:  # one layer's input kept per layer, one layer recomputed at a time
        activations = shape.layers * tokens * shape.hidden * act_bytes + per_layer
    else:
        activations = shape.layers * per_layer
    scored = tokens * trained_fraction if labelled_logits else tokens
    rows = min(scored, LOGIT_CHUNK) if labelled_logits else scored
    logits = rows * shape.vocab * 4 * 3  # fp32 logits, their softmax and their gradient
    linears = shape.layers * sum(a * b for a, b in shape.linears().values())
    return Memory(
        weights=shape.params * wbytes - (linears * (wbytes - BYTES["bfloat16"]) if frozen_bf16 else 0),
        adapter=0 if adapter == "full" else trainable * 4,  # fp32 master weights
        optimizer=trainable * 8,  # AdamW: two fp32 moments
        gradients=trainable * 4,
        activations=activations,
        logits=logits,
        runtime=RUNTIME_CUDA if cuda else RUNTIME_CPU,
        # Measured on SmolLM2-135M (docs/planner.md): under bf16 autocast on CPU the main heap grows 322 -> 550 MiB
        # over the first 14 steps and then stays, with a trim after every step and whatever oneDNN's kernel-cache
        # bound; in fp32 (MKL's matmuls, not oneDNN's) it stays at 251 MiB. The cause is not pinned down; counted
        # as the size of the bf16 weights (257 MiB there against the 228 measured), fitted on that one model.
        heap=shape.params * 2 if autocast and not cuda else 0.0,
    )

"""A chat session over a tuned run or any model, rendered with the model's own chat template."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunesmith.errors import RunError
from tunesmith.eval import generate
from tunesmith.loader import load_target
from tunesmith.train.methods import held_out_examples


@dataclass
class ChatSession:
    model: Any
    tokenizer: Any
    system: str | None = None
    warning: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    recipe: Any = None  # a run's recipe: with `rag`, each question gets its retrieved context, as in serve and eval
    thinking: bool | None = None  # a run's thinking mode: prompts rendered as in training, eval and serve

    @classmethod
    def open(cls, target: str, system: str | None = None) -> ChatSession:
        """Open a run folder (base + adapter, template checked) or a model (folder, .gguf, catalog name)."""
        loaded = load_target(target)
        run = loaded.run
        if run is not None and system is None:
            # The run was trained with its data's system prompt; answering without it is a different task.
            # Read from the run folder's own held-out rows, so chat works after the data moved.
            try:
                first = held_out_examples(run)[0].messages
                system = first[0]["content"] if first[0]["role"] == "system" else None
            except RunError:  # a run whose held-out rows cannot be read: chat without the system prompt
                system = None
        recipe = run.recipe if run else None
        return cls(loaded.model, loaded.tokenizer, system, loaded.template_warning, recipe=recipe, thinking=loaded.thinking)

    def ask(self, text: str, max_new_tokens: int = 256) -> str:
        """Append a user turn, generate greedily, keep the answer in the history (its reasoning trace is shown, not
        sent back: clients send only the content, as the family's template expects)."""
        self.history.append({"role": "user", "content": text})
        conv = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
        if self.recipe is not None and self.recipe.rag is not None:
            from tunesmith.rag.prompt import augment, recipe_retriever

            rag, retriever = self.recipe.rag, recipe_retriever(self.recipe)
            if retriever is not None:
                conv = augment(conv, retriever, rag.k, rag.template, rag.mode)[0]
        done = generate.generate_detailed(
            self.model, self.tokenizer, [conv], max_new_tokens, batch_size=1, thinking=self.thinking
        )[0]
        self.history.append({"role": "assistant", "content": done.answer})
        return done.text

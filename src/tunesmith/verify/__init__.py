"""`tunesmith verify RUN`: the same held-out prompts through every way the tuned model is run, compared.

The reference is what training did: each held-out prompt as the training render put it before the answer, the chat
family's end-of-turn tokens (trained, so every path must stop on them), and the greedy tokens of the adapter in
transformers. The paths compared with it: the merged folder (its own template and generation_config, as another
runtime reads them), the served endpoint (the real server, in this process), the exported GGUF (reloaded by
transformers' GGUF loader; and, when llama-cpp-python is installed, in llama.cpp itself with the template embedded
in the file). f16/bf16/f32 exports must give identical greedy tokens; a quantized one is reported. A divergence
names the path, the prompt and the first differing token; `Divergent` makes the CLI exit 3.
`export` runs it before publishing a GGUF, `serve --check` on the served runs (prompt bytes and stop tokens).
"""

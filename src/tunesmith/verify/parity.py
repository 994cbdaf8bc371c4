"""Every way the tuned model is run, compared on the same held-out prompts (the package docstring says how)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf import ExportLineage, convert, refuse_unconvertible
from tunesmith.export.merge import merge
from tunesmith.verify.compare import Divergence, Report
from tunesmith.verify.paths import (
    DEFAULT_PROMPTS,
    DEFAULT_TOKENS,
    check_gguf,
    merged_path,
    start,
)
from tunesmith.verify.served import served_path


def _gguf_for(report: Report, merged: Path | None, stage: Path) -> Path | None:
    """A temporary f16 GGUF of the merged folder (None, with the reason reported, when it cannot be made)."""
    if merged is None:
        report.skip("gguf", "no merged model to convert")
        return None
    try:
        refuse_unconvertible(merged)
    except TunesmithError as exc:
        report.skip("gguf", exc.message)
        return None
    out = stage / "verify.gguf"
    convert(merged, out, "f16", ExportLineage(artifact=out.name, kind="gguf", type="f16", chat_template_sha256="-"))
    return out


def verify(
    run: Any,
    *,
    merged: Path | None = None,
    gguf_file: Path | None = None,
    serve: bool = True,
    gguf: bool = True,
    prompts: int = DEFAULT_PROMPTS,
    max_new_tokens: int = DEFAULT_TOKENS,
) -> Report:
    """Every path of `run` against the reference (see the module docstring). Without `merged` an adapter run is
    merged into a temporary folder; without `gguf_file` that folder is converted to a temporary f16 GGUF where
    llama.cpp's converter supports it (otherwise the GGUF path is skipped, with the refusal as its reason)."""
    ref, report = start(run, prompts, max_new_tokens)
    with tempfile.TemporaryDirectory(prefix="tunesmith-verify-") as tmp:
        stage = Path(tmp)
        if merged is None and (run.adapter_dir / "adapter_config.json").exists():
            try:
                merged = Path(merge(run, stage / "merged", dtype="float32", n_check=prompts)["out"])
            except TunesmithError as exc:  # merge refuses when its own greedy check differs
                report.add("merged", [Divergence("merged", "tokens", None, None, "the adapter's tokens", exc.message)])
        elif merged is None:
            merged = run.adapter_dir  # a full fine-tune's adapter/ is the complete model
        if merged is not None and not any(c.path == "merged" for c in report.checks):
            report.add("merged", merged_path(ref, merged, max_new_tokens), str(merged))
        if serve:
            report.add("served", served_path(run, ref, max_new_tokens), "the real server, in this process")
        if gguf_file is None and gguf:
            gguf_file = _gguf_for(report, merged, stage)
        if gguf_file is not None:
            check_gguf(report, ref, gguf_file, max_new_tokens)
    return report

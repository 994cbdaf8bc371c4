"""GGUF export on the tiny model: f16 round trip with identical greedy tokens, lineage in the file and beside it,
adapter-only as a llama.cpp LoRA (and refused for DoRA / prompt tuning), never over an existing file."""

import json
import shutil
from pathlib import Path

import gguf
import pytest
import torch
from safetensors.torch import load_file

from tunesmith import models
from tunesmith.config import load_recipe
from tunesmith.errors import TunesmithError
from tunesmith.export import gguf as export
from tunesmith.export import gguf_lora
from tunesmith.run import load_run
from tunesmith.train import sft


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    """One trained tiny run (with an eval report) shared by the tests here; none of them changes it."""
    import yaml

    from helpers import chat_rows, write_jsonl
    from tunesmith.records import EvalReport, Judgement, write_eval_report

    root = tmp_path_factory.mktemp("gguf-run")
    write_jsonl(root / "train.jsonl", chat_rows(24, seed=1))
    write_jsonl(root / "eval.jsonl", chat_rows(6, seed=2))
    (root / "recipe.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "model": {"base": str(tiny_model_dir)},
                "output_dir": "runs/tiny",
                "data": {"train": ["train.jsonl"], "eval": "eval.jsonl", "max_length": 128},
                "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
                "training": {"max_steps": 3, "batch_size": 4, "learning_rate": 5e-2, "save_steps": 3},
            }
        )
    )
    run = sft.run(load_recipe(root / "recipe.yaml"))
    write_eval_report(
        run.dir / "eval" / "report.json",
        EvalReport(
            run=run.recipe.name,
            base_model="tiny",
            n_examples=6,
            json_mode=True,
            judgement=Judgement(),
            summary={"base": {"json_valid": 0.0}, "tuned": {"json_valid": 0.5}, "delta": {"json_valid": 0.5}},
            chat_template_sha256=run.template_hash,
        ),
    )
    return run


def test_f16_round_trip_identical_tokens_and_lineage(tiny_run, tmp_path):
    out = tmp_path / "exports" / "tiny.gguf"
    lineage = export.export_gguf(tiny_run.dir, out, "f16", n_check=3, max_new_tokens=12)
    assert lineage.check["prompts"] == 3 and lineage.check["identical"] == 3
    # Nothing but the file and its sidecar (no temp file, no merged folder left behind).
    assert sorted(p.name for p in out.parent.iterdir() if p.name != ".tunesmith") == ["tiny.gguf", "tiny.gguf.lineage.json"]

    tokenizer = models.load_tokenizer(str(tiny_run.adapter_dir))
    assert export.gguf_string(out, "tokenizer.chat_template") == tokenizer.chat_template
    embedded = export.read_lineage(out)
    assert embedded.run == str(tiny_run.dir) and embedded.data == tiny_run.manifest.data
    assert embedded.chat_template_sha256 == tiny_run.template_hash == models.chat_template_hash(tokenizer)
    assert embedded.recipe["name"] == "tiny" and embedded.base_model["path"] == tiny_run.base_path
    assert embedded.eval_summary["summary"]["delta"]["json_valid"] == 0.5
    sidecar = export.ExportLineage.model_validate_json(out.with_name("tiny.gguf.lineage.json").read_text())
    assert sidecar.sha256 == models.sha256_file(out) and sidecar.check == lineage.check
    assert sidecar.model_dump(exclude={"check", "sha256"}) == embedded.model_dump(exclude={"check", "sha256"})

    # The trained weights made it: the GGUF reloads to the merged model's logits (f16 rounding only).
    model, tok = models.load_gguf(out)
    ids = tok("<|im_start|>user\nAdd 3 and 4.<|im_end|>\n", return_tensors="pt").input_ids
    from tunesmith.loader import load_run_model

    tuned = load_run_model(tiny_run).model
    with torch.inference_mode():
        assert torch.allclose(model(ids).logits, tuned(ids).logits, atol=2e-2)

    with pytest.raises(TunesmithError, match="already exists"):  # never over an existing file
        export.export_gguf(tiny_run.dir, out, "f16")
    (tmp_path / "mine.gguf").write_text("user file")
    with pytest.raises(TunesmithError, match="already exists"):
        export.export_gguf(tiny_run.dir, tmp_path / "mine.gguf", "f16")
    assert (tmp_path / "mine.gguf").read_text() == "user file"


def test_adapter_only_is_a_llama_cpp_lora(tiny_run, tmp_path):
    out = tmp_path / "lora.gguf"
    lineage = gguf_lora.export_adapter_gguf(tiny_run.dir, out)
    reader = gguf.GGUFReader(out)
    assert export.gguf_string(out, "general.type") == "adapter" and export.gguf_string(out, "adapter.type") == "lora"
    assert float(reader.fields["adapter.lora.alpha"].parts[-1][0]) == 8.0
    names = {t.name for t in reader.tensors}
    peft = load_file(str(tiny_run.adapter_dir / "adapter_model.safetensors"))
    assert len(names) == len(peft) == 2 * lineage.check["adapted_weights"]
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.1.ffn_down.weight.lora_b" in names
    tensors = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    # Non-permuted weights are carried bit for bit.
    a = peft["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"]
    assert torch.equal(tensors["blk.0.ffn_down.weight.lora_a"].reshape(a.shape), a)
    assert export.read_lineage(out).kind == "gguf-lora"


def test_lora_deltas_match_the_merged_weights_in_gguf_layout(tiny_run, tmp_path):
    """llama.cpp applies W + alpha/r * B @ A per GGUF tensor: that must equal the merged model's tensor in the same layout."""
    lora, full = tmp_path / "lora.gguf", tmp_path / "full.gguf"
    gguf_lora.export_adapter_gguf(tiny_run.dir, lora)
    from tunesmith.export.merge import merge

    merged = merge(tiny_run, tmp_path / "merged", dtype="float32")
    base_gguf = tmp_path / "base.gguf"
    lineage = export.ExportLineage(artifact="x", kind="gguf", type="f32", chat_template_sha256="-")
    export.convert(Path(tiny_run.base_path), base_gguf, "f32", lineage)
    export.convert(Path(merged["out"]), full, "f32", lineage)
    t = lambda p: {x.name: torch.from_numpy(x.data.copy()) for x in gguf.GGUFReader(p).tensors}  # noqa: E731
    base, merged_t, adapter = t(base_gguf), t(full), t(lora)
    scale = 8.0 / 4  # alpha / r of the tiny recipe
    for name in [n.removesuffix(".lora_a") for n in adapter if n.endswith(".lora_a")]:
        delta = adapter[name + ".lora_b"] @ adapter[name + ".lora_a"]
        assert torch.allclose(base[name] + scale * delta, merged_t[name], atol=1e-5), name


@pytest.mark.parametrize(
    "change, message",
    [
        ({"use_dora": True}, "DoRA"),
        ({"peft_type": "PROMPT_TUNING"}, "prompt tuning"),
        ({"modules_to_save": ["model.layers.1"]}, "modules_to_save"),
    ],
)
def test_adapter_only_refuses_what_llama_cpp_cannot_apply(tiny_run, tmp_path, change, message):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run.dir, copy)
    cfg_path = copy / "adapter" / "adapter_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), **change}))
    with pytest.raises(TunesmithError, match=message):
        gguf_lora.export_adapter_gguf(copy, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_unknown_type_is_refused(tiny_run, tmp_path):
    with pytest.raises(TunesmithError, match="--type q4"):
        export.export_gguf(tiny_run.dir, tmp_path / "x.gguf", "q4")
    assert load_run(tiny_run.dir).manifest.run == "tiny"


@pytest.mark.parametrize("adapter_only", [True, False])
def test_a_link_planted_at_a_temp_name_is_never_followed(tiny_run, tmp_path, adapter_only):
    """A symlink at `.OUT.tmp` (the old fixed temp name) or any name beside --out: the file it points to is untouched."""
    outside = tmp_path / "elsewhere" / "victim.bin"
    outside.parent.mkdir()
    outside.write_bytes(b"not yours")
    shared = tmp_path / "shared"
    shared.mkdir()
    out = shared / "lora.gguf"
    links = [shared / ".lora.gguf.tmp", shared / ".lora.gguf.lineage.json.tmp"]
    for link in links:
        link.symlink_to(outside)
    if adapter_only:
        gguf_lora.export_adapter_gguf(tiny_run.dir, out)
    else:
        export.export_gguf(tiny_run.dir, out, "f16", n_check=1, max_new_tokens=4)
    assert outside.read_bytes() == b"not yours"
    assert not out.is_symlink() and out.stat().st_size > 1000 and export.read_lineage(out).artifact == "lora.gguf"
    assert all(link.is_symlink() and link.resolve() == outside for link in links)
    assert sorted(p.name for p in shared.iterdir()) == sorted(
        [".tunesmith", "lora.gguf", "lora.gguf.lineage.json", *(p.name for p in links)]
    )


@pytest.mark.parametrize("content", ["{broken", "[1, 2]", "\x00\x89binary", "[" * 5000])
def test_a_damaged_lineage_or_adapter_config_is_one_clear_error(tiny_run, tiny_model_dir, tmp_path, content):
    """A merged folder's tunesmith_lineage.json and a run's adapter_config.json, damaged: RunError naming the file."""
    merged = tmp_path / "merged"
    shutil.copytree(tiny_model_dir, merged)
    (merged / "tunesmith_lineage.json").write_text(content)
    with pytest.raises(TunesmithError, match=r"tunesmith_lineage.json is not a readable lineage record"):
        export.export_gguf(merged, tmp_path / "out" / "m.gguf", "f16")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run.dir, copy)
    (copy / "adapter" / "adapter_config.json").write_text(content)
    with pytest.raises(TunesmithError, match=r"adapter_config.json is not a readable peft adapter config"):
        gguf_lora.export_adapter_gguf(copy, tmp_path / "out" / "a.gguf")
    from tunesmith.export.merge import merge

    with pytest.raises(TunesmithError, match=r"adapter_config.json is not a readable peft adapter config"):
        merge(load_run(copy), tmp_path / "out" / "merged")
    assert not (tmp_path / "out").exists()  # refused before any folder appeared

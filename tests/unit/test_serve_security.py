"""Keys, adapter names and paths, the serve folder, and the CLI's clean refusals (no model needed)."""

from __future__ import annotations

import pytest

from tunesmith.errors import ModelError, RunError
from tunesmith.serve.security import (
    KeyRing,
    check_name,
    check_safetensors,
    contained_path,
)
from tunesmith.serve.server import parse_adapters, serve_dir


def test_keys_file_hash_is_a_comment_only_at_the_start_of_a_line(tmp_path):
    """`user#key-1` is one key (its prefix is not); `admin adm#in-key` never makes `adm` an admin key."""
    keys = tmp_path / "keys"
    keys.write_text("\ufeff# users\nuser#key-1\n\t # admins\nadmin adm#in-key\r\nadmin\tk-tab\n", encoding="utf-8")
    ring = KeyRing.build([], [], keys)
    assert ring.allows("Bearer user#key-1") and not ring.allows("Bearer user")
    assert ring.allows_admin("Bearer adm#in-key") and not ring.allows("Bearer adm") and not ring.allows_admin("Bearer adm")
    assert ring.allows_admin("Bearer k-tab") and not ring.allows_admin("Bearer user#key-1")
    assert not ring.allows("Bearer # users") and not ring.allows("Bearer #")
    assert ring.allows("bearer user#key-1")  # the scheme is case-insensitive (RFC 9110), the key is not
    assert not ring.allows("Bearer USER#KEY-1") and not ring.allows("Bearer ")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("admin k-admin  # ops\n", ":1: expected `KEY` or `admin KEY`, found 4"),  # no comments after an entry
        ("ok-key\nadmin\n", ":2: expected `KEY` or `admin KEY`, found 1 word(s) (`admin` needs a key"),
        ("admin a b\n", ":1:"),
        ("user k\n", ":1:"),
        ("clé\n", ":1: an API key is not visible ASCII"),
    ],
)
def test_keys_file_refuses_what_it_does_not_document(tmp_path, text, where):
    keys = tmp_path / "keys"
    keys.write_text(text, encoding="utf-8")
    with pytest.raises(RunError) as err:
        KeyRing.build([], [], keys)
    assert where in err.value.message and "clé" not in err.value.message  # a key is never echoed


@pytest.mark.parametrize("bad", ["", " ", "two words", "tab\there"])
def test_flag_keys_must_be_one_visible_word(bad):
    with pytest.raises(RunError, match="API key"):
        KeyRing.build([bad], [])
    with pytest.raises(RunError, match="API key"):
        KeyRing.build(["good"], [bad])


def test_keyring_flags_file_and_admin(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nk-file\n  # ops\nadmin k-admin\n\n", encoding="utf-8")
    ring = KeyRing.build(["k-flag"], [], keys)
    for key in ("k-flag", "k-file", "k-admin"):
        assert ring.allows(f"Bearer {key}")
    assert ring.allows_admin("Bearer k-admin") and not ring.allows_admin("Bearer k-flag")
    for header in (None, "", "k-flag", "Basic k-flag", "Bearer k-fla", "Bearer k-flagg"):
        assert not ring.allows(header)
    assert all(len(d) == 32 for d in ring.user)  # only digests are kept
    keys.write_text("admin a b\n", encoding="utf-8")
    with pytest.raises(RunError, match=":1:"):
        KeyRing.build([], [], keys)


@pytest.mark.parametrize("name", ["a", "run-1", "v1.2_final", "A" * 128])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", ".hidden", "../x", "a/b", "a b", "A" * 129, "é"])
def test_bad_names(name):
    with pytest.raises(ModelError):
        check_name(name)


def test_paths_stay_inside_the_adapters_folder(tmp_path):
    root = tmp_path / "adapters"
    (root / "good").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert contained_path(root, "good") == (root / "good").resolve()
    for bad in ("../outside", str(outside), "link", "good/../../outside", "", "missing"):
        with pytest.raises(ModelError):
            contained_path(root, bad)


def test_pickled_adapters_are_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match="safetensors"):
        check_safetensors(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    check_safetensors(tmp_path)


def test_serve_folder_is_ours_or_new(tmp_path):
    made = serve_dir(tmp_path / "serve")
    assert (made / ".tunesmith-serve").exists() and serve_dir(made) == made
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not made by"):
        serve_dir(theirs)
    assert (theirs / "notes.txt").read_text() == "mine"


def test_adapter_specs(tmp_path):
    (tmp_path / "r1").mkdir()
    assert parse_adapters([f"a={tmp_path / 'r1'}", str(tmp_path / "r1")]) == {
        "a": str(tmp_path / "r1"),
        "r1": str(tmp_path / "r1"),
    }
    with pytest.raises(ModelError):
        parse_adapters(["../evil=" + str(tmp_path / "r1")])
    with pytest.raises(ModelError, match="not found"):
        parse_adapters([f"a={tmp_path / 'nope'}"])


def test_request_log_refuses_a_foreign_file(tmp_path):
    from tunesmith.serve.store import RequestLog

    foreign = tmp_path / "theirs.sqlite"
    foreign.write_bytes(b"not a database at all" * 10)
    with pytest.raises(RunError, match="not a tunesmith request log"):
        RequestLog.open(foreign, create=True)


def test_cli_vllm_without_vllm_is_a_clean_error(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed")
    except ImportError:
        pass
    res = CliRunner().invoke(app, ["serve", str(tiny_model_dir), "--engine", "vllm", "--dir", str(tmp_path / "s")])
    assert res.exit_code == 1 and "vllm" in res.output and "Traceback" not in res.output

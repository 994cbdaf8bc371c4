"""Who may call the server, and which adapter names and paths it accepts.

Keys are kept only as SHA-256 digests and compared with hmac.compare_digest, so neither the
comparison time nor a memory dump gives a key away. Adapter paths given at run time must stay
inside the adapters folder after resolving `..` and symlinks.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.errors import ModelError, RunError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass
class KeyRing:
    """SHA-256 digests of the user keys (every route but /health and /metrics) and of the admin keys (adapters)."""

    user: list[bytes] = field(default_factory=list)
    admin: list[bytes] = field(default_factory=list)

    @classmethod
    def build(cls, api_keys: list[str], admin_keys: list[str], keys_file: Path | None = None) -> KeyRing:
        """Keys from flags and from a keys file (format: `read_keys_file`); RunError for an unusable key."""
        users, admins = list(api_keys), list(admin_keys)
        if keys_file is not None:
            file_users, file_admins = read_keys_file(keys_file)
            users, admins = users + file_users, admins + file_admins
        for key in users + admins:
            check_key(key)
        # An admin key may also call the ordinary routes.
        return cls([_digest(k) for k in users + admins], [_digest(k) for k in admins])

    @staticmethod
    def _match(header: str | None, digests: list[bytes]) -> bool:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        got = _digest(token.strip())
        ok = False
        for d in digests:  # no early exit: the time taken does not depend on which key matched
            ok |= hmac.compare_digest(got, d)
        return ok

    def allows(self, header: str | None) -> bool:
        return self._match(header, self.user)

    def allows_admin(self, header: str | None) -> bool:
        return self._match(header, self.admin)


KEY_RE = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: what an HTTP header carries unchanged


def check_key(key: str) -> str:
    """A usable API key: one or more visible ASCII characters (no spaces); RunError otherwise (the key is not shown)."""
    if not KEY_RE.match(key):
        raise RunError(
            f"an API key is {'empty' if not key else 'not visible ASCII (spaces or other characters)'}",
            hint="A key is one word of printable ASCII characters, e.g. from `tunesmith serve` (ts-...) or `openssl rand -hex 24`.",
        )
    return key


def read_keys_file(path: Path) -> tuple[list[str], list[str]]:
    """(user keys, admin keys) from a keys file.

    One entry a line: `KEY` (a user key) or `admin KEY` (an admin key), words separated by spaces or tabs.
    Blank lines and lines whose first non-blank character is `#` are skipped; a `#` anywhere else is part of
    a key (`user#key-1` is one key). Any other line is an error naming it, so a typo never becomes a key.
    """
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"cannot read the keys file {path}: {exc}") from None
    users: list[str] = []
    admins: list[str] = []
    for n, line in enumerate(lines, 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) == 2 and words[0] == "admin":
            admins.append(words[1])
        elif len(words) == 1 and words[0] != "admin":
            users.append(words[0])
        else:
            raise RunError(
                f"{path}:{n}: expected `KEY` or `admin KEY`, found {len(words)} word(s)"
                + (" (`admin` needs a key after it)" if words == ["admin"] else ""),
                hint="A `#` starts a comment only at the start of a line; elsewhere it is part of a key.",
            )
        try:
            check_key(words[-1])
        except RunError as exc:
            raise RunError(f"{path}:{n}: {exc.message}", hint=exc.hint) from None
    return users, admins


def generate_key() -> str:
    """A fresh random API key (used when serve starts without one)."""
    return "ts-" + secrets.token_urlsafe(24)


def check_name(name: str) -> str:
    """An adapter name as the API sees it; ModelError unless it matches NAME_RE."""
    if not NAME_RE.match(name or ""):
        raise ModelError(
            f"invalid adapter name {name!r}",
            hint="Names start with a letter or digit and use only letters, digits, '.', '_', '-' (max 128).",
        )
    return name


def contained_path(root: Path, relative: str) -> Path:
    """`relative` resolved inside `root`; ModelError for absolute paths, `..` or symlinks leading out."""
    if not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise ModelError(f"adapter path {relative!r} must be relative to the adapters folder, without '..'")
    root = root.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise ModelError(f"adapter path {relative!r} leads outside the adapters folder {root}")
    if not target.exists():
        raise ModelError(f"no adapter at {target}")
    return target


def check_safetensors(adapter_dir: Path) -> None:
    """Refuse adapters stored only as pickles (loading a pickle can run code)."""
    if (adapter_dir / "adapter_config.json").exists() and not (adapter_dir / "adapter_model.safetensors").exists():
        raise ModelError(
            f"{adapter_dir} has no adapter_model.safetensors",
            hint="Only safetensors adapters are served; re-save it with safe_serialization=True.",
        )


def check_adapter_files(adapter_dir: Path) -> None:
    """Refuse, before anything is loaded, an adapter folder whose files cannot be a peft adapter.

    adapter_config.json must be a JSON object naming its peft_type; adapter_model.safetensors must parse (its
    header and the byte ranges it declares), so a truncated or foreign file is a clear ModelError, not a crash.
    """
    import json

    from safetensors import SafetensorError, safe_open

    config = adapter_dir / "adapter_config.json"
    if not config.is_file():
        raise ModelError(f"{adapter_dir} holds no adapter (no adapter_config.json)")
    check_safetensors(adapter_dir)
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelError(f"{config} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("peft_type"), str):
        raise ModelError(
            f"{config} is not a peft adapter config (expected a JSON object with a peft_type, found {type(data).__name__})",
            hint="Point at the adapter folder a `tunesmith train` run (or peft's save_pretrained) wrote.",
        )
    weights = adapter_dir / "adapter_model.safetensors"
    try:
        with safe_open(str(weights), framework="numpy") as f:
            names = list(f.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{weights} is not a readable safetensors file: {exc}", hint="Re-save or re-copy the adapter.") from None
    if not names:
        raise ModelError(f"{weights} holds no tensors", hint="Re-save or re-copy the adapter.")

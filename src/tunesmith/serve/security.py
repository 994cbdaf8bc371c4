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
    """API keys (any route but /health and /metrics) and admin keys (adding and removing adapters)."""

    user: list[bytes] = field(default_factory=list)
    admin: list[bytes] = field(default_factory=list)

    @classmethod
    def build(cls, api_keys: list[str], admin_keys: list[str], keys_file: Path | None = None) -> KeyRing:
        """Keys from flags and from a keys file: one key a line, `admin KEY` for an admin key, # comments."""
        users, admins = list(api_keys), list(admin_keys)
        if keys_file is not None:
            try:
                lines = keys_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise RunError(f"cannot read the keys file {keys_file}: {exc}") from None
            for n, line in enumerate(lines, 1):
                parts = line.split("#", 1)[0].split()
                if not parts:
                    continue
                if len(parts) == 2 and parts[0] == "admin":
                    admins.append(parts[1])
                elif len(parts) == 1:
                    users.append(parts[0])
                else:
                    raise RunError(f"{keys_file}:{n}: expected `KEY` or `admin KEY`")
        # An admin key may also call the ordinary routes.
        return cls([_digest(k) for k in users + admins], [_digest(k) for k in admins])

    @staticmethod
    def _match(header: str | None, digests: list[bytes]) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        got = _digest(header[len("Bearer ") :].strip())
        ok = False
        for d in digests:  # no early exit: the time taken does not depend on which key matched
            ok |= hmac.compare_digest(got, d)
        return ok

    def allows(self, header: str | None) -> bool:
        return self._match(header, self.user)

    def allows_admin(self, header: str | None) -> bool:
        return self._match(header, self.admin)


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

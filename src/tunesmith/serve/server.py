"""Putting a server together: the serve folder, the request log, the keys and the engine loader.

The serve folder (default ./serve) is created by serve and marked as such; serve never writes into
a folder it did not create. Without --api-key / --keys-file a random key is made, written to
<dir>/api_key (mode 0600) and printed once.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith import models
from tunesmith.atomic import write_text_atomic
from tunesmith.errors import ModelError, RunError
from tunesmith.run import is_run_dir, load_run
from tunesmith.serve import engine as engine_module
from tunesmith.serve.app import ServeSettings, create_app
from tunesmith.serve.engine import run_name
from tunesmith.serve.security import KeyRing, check_adapter_files, check_name, generate_key
from tunesmith.serve.store import DB_NAME, RequestLog, is_url
from tunesmith.serve.vllm_engine import load_vllm_engine, require_vllm

MARKER = ".tunesmith-serve"


@dataclass
class ServeOptions:
    """What `tunesmith serve` was asked (see its --help for each option)."""

    target: str
    adapters: list[str] = field(default_factory=list)  # "name=RUN_DIR"
    index: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    dir: Path = Path("serve")
    log_path: str | Path | None = None  # a file, or a postgresql:// URL shared by several replicas
    log: bool = True
    log_content: bool = True
    api_keys: list[str] = field(default_factory=list)
    admin_keys: list[str] = field(default_factory=list)
    keys_file: Path | None = None
    adapters_dir: Path | None = None
    max_queue: int = 64
    max_batch: int = 8
    batching: bool = True
    timeout_s: float = 300.0
    check: bool = False
    engine: str = "transformers"
    dtype: str = "auto"
    name: str | None = None  # the served run's (or model's) name; default: its folder name
    replica_id: str | None = None  # written into every log row; default: hostname:port


@dataclass
class Prepared:
    app: Any
    url: str
    generated_key: str | None
    log_path: str | None  # where the log is, for people (a URL's password masked)


def serve_dir(path: Path) -> Path:
    """The serve folder: created with a marker, or an existing one that carries it (never someone else's folder)."""
    if path.exists() and not path.is_dir():
        raise RunError(f"--dir {path} is a file, not a folder", hint="Pass --dir with a new or empty folder.")
    if path.exists() and not (path / MARKER).exists() and any(path.iterdir()):
        raise RunError(f"{path} exists and was not made by `tunesmith serve`", hint="Pass --dir with a new or empty folder.")
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).touch()
    return path


def check_listen(host: str, port: int) -> None:
    """RunError unless this process could listen on host:port now (a port in use, out of range, an unknown host)."""
    if not 1 <= port <= 65535:
        raise RunError(f"--port {port} is not a TCP port", hint="Pass a port from 1 to 65535 (default 8000).")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a TIME_WAIT port is free
            probe.bind(address)
    except OSError as exc:
        raise RunError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="Pick another --port, stop what is using it, or check --host.",
        ) from None


def _check_run(path: str | Path, what: str) -> None:
    """A served run's files, before anything loads: its adapter (when it has one) and its recipe's retrieval index."""
    from tunesmith.rag.index import read_meta

    run = load_run(path) if is_run_dir(path) else None
    adapter_dir = run.adapter_dir if run is not None else Path(path)
    if run is None or (adapter_dir / "adapter_config.json").exists():
        try:
            check_adapter_files(adapter_dir)
        except ModelError as exc:
            raise ModelError(f"{what}: {exc.message}", hint=exc.hint) from None
    rag = getattr(run.recipe, "rag", None) if run is not None else None
    if rag is not None and rag.index is not None:
        read_meta(Path(rag.index))


def parse_adapters(specs: list[str]) -> dict[str, str]:
    """name=RUN_DIR pairs (a bare RUN_DIR is named after its folder)."""
    out: dict[str, str] = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else (Path(spec).name, "=", spec)
        check_name(name)
        if name in out:
            raise ModelError(f"adapter name {name!r} given twice")
        if not Path(path).exists():
            raise ModelError(f"adapter {name!r}: {path} not found")
        out[name] = path
    return out


def _user_keys(opts: ServeOptions) -> list[str]:
    """User keys from --api-key and $TUNESMITH_API_KEY (the keys file is read by KeyRing.build)."""
    return list(opts.api_keys) + ([os.environ["TUNESMITH_API_KEY"]] if os.environ.get("TUNESMITH_API_KEY") else [])


def _keys(opts: ServeOptions, folder: Path) -> tuple[KeyRing, str | None]:
    generated = None
    api_keys = _user_keys(opts)
    if not api_keys and opts.keys_file is None:
        generated = generate_key()
        key_file = folder / "api_key"
        write_text_atomic(key_file, generated + "\n", perms=0o600)  # private from its first byte
        api_keys = [generated]
    return KeyRing.build(api_keys, opts.admin_keys, opts.keys_file), generated


def loader(opts: ServeOptions, adapters: dict[str, str]) -> Any:
    """A zero-argument function that loads the engine (called in the server's startup thread)."""
    if opts.engine == "vllm":
        require_vllm()  # fail now, with a clear message, rather than after the server started
        return lambda: load_vllm_engine(opts.target, adapters, opts.dtype, opts.name)
    if opts.engine != "transformers":
        raise ModelError(f"unknown engine {opts.engine!r}", hint="Use transformers (default) or vllm.")

    return lambda: engine_module.load_engine(opts.target, adapters, opts.dtype, opts.name)


def prepare(opts: ServeOptions) -> Prepared:
    """Validate the options and build the app (the model loads once the server runs)."""
    from tunesmith.rag.index import read_meta

    # Everything that can be refused is checked before the serve folder is made or the model loads.
    check_listen(opts.host, opts.port)
    if not Path(opts.target).exists() and "/" in opts.target and opts.target.startswith((".", "/", "~")):
        raise ModelError(f"{opts.target} not found")
    if opts.name is not None:
        check_name(opts.name)
    if is_run_dir(opts.target):
        run = load_run(opts.target)
        run_name(run, opts.name, (run.adapter_dir / "adapter_config.json").exists())
        _check_run(opts.target, f"run {opts.target}")
    elif opts.engine == "transformers":  # a model: found and readable before the server starts (vLLM resolves its own)
        models.read_config(models.resolve_base(opts.target))
    adapters = parse_adapters(opts.adapters)
    for adapter, path in adapters.items():
        _check_run(path, f"adapter {adapter!r}")
    if opts.index is not None:
        read_meta(Path(opts.index))
    if opts.adapters_dir is not None and not opts.adapters_dir.is_dir():
        raise RunError(f"--adapters-dir {opts.adapters_dir} is not a folder")
    KeyRing.build(_user_keys(opts), opts.admin_keys, opts.keys_file)  # a bad key or keys file: refused here
    replica = replica_id(opts)
    shared = opts.log and opts.log_path is not None and is_url(opts.log_path)
    store = RequestLog.open(str(opts.log_path), create=True, replica=replica) if shared else None  # unreachable: refused
    folder = serve_dir(opts.dir)
    keys, generated = _keys(opts, folder)
    if opts.log and store is None:
        store = RequestLog.open(opts.log_path or folder / DB_NAME, create=True, replica=replica)
    adapters_dir = opts.adapters_dir
    if adapters_dir is None:  # sibling runs of the served run are the natural candidates
        adapters_dir = Path(opts.target).resolve().parent if is_run_dir(opts.target) else folder / "adapters"
        adapters_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://{'127.0.0.1' if opts.host in ('0.0.0.0', '::') else opts.host}:{opts.port}"
    settings = ServeSettings(
        keys=keys,
        max_queue=opts.max_queue,
        max_batch=opts.max_batch,
        batching=opts.batching,
        timeout_s=opts.timeout_s,
        log_content=opts.log_content,
        index=opts.index,
        adapters_dir=adapters_dir,
        check=opts.check,
        check_url=url,
        serve_dir=folder,
    )
    app = create_app(loader(opts, adapters), settings, store)
    return Prepared(app, url, generated, store.location if store is not None else None)


def replica_id(opts: ServeOptions) -> str:
    """This server's name in the request log: --replica-id, else hostname:port (unique behind one load balancer)."""
    name = opts.replica_id if opts.replica_id is not None else f"{socket.gethostname()}:{opts.port}"
    if not name.strip() or len(name) > 200 or not name.isprintable():
        raise RunError(f"--replica-id {name!r} is not a usable name", hint="Use 1-200 printable characters, e.g. web-1:8000.")
    return name

"""What a recipe launched from the studio may point at: the folders the studio was given, and no code from a form.

`check_launch` reads the recipe's raw YAML values before the recipe is validated (validation opens files and
checks that they exist, which would already answer questions about other folders) and lists every field that
reaches outside:

- files: `output_dir`, `data.train`/`data.eval`, `rag.index`, an `eval.graders` file and a reward's
  `json_schema` file must lie inside the studio's folders (`--runs`, `--data`);
- models: `model.base`, `distill.teacher`, `ladder.student`, `eval.judge.model`, a `score_model` grader's
  model and `rag.embedder` must be a catalog name (the bundled embedder for `rag.embedder`) or an existing
  folder or file inside those folders or `--models`; a hub id is not launched from the studio;
- code: `model.trust_remote_code` is never turned on from the studio, inline `python` graders are refused,
  and a custom GRPO reward must live in a `.py` file inside the studio's folders (not an importable module);
- network: an `eval.judge.model` endpoint must be on this machine (the judge sends an API key from the
  environment with each request).

Paths resolve as `train` will resolve them: symlinks followed, relative ones against the recipe's folder
(data, index, teacher) or the working folder (model.base); every reading that exists must stay inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tunesmith.config import DEFAULT_BASE
from tunesmith.errors import RecipeError
from tunesmith.models import CATALOG

REMOTE_CODE = (
    "trust_remote_code cannot be turned on from the studio: the model's own Python code would run. Read that code, "
    "then train from the command line (`tunesmith train RECIPE`)"
)


class _Check:
    def __init__(self, base_dir: Path, files: list[Path], models: list[Path]) -> None:
        self.base_dir, self.files, self.models = base_dir, files, [*files, *models]
        self.problems: list[tuple[str, str]] = []

    def _readings(self, value: str, against_cwd: bool) -> list[Path]:
        """Where `value` may point once resolved ([] for a value that is no path at all: it then fits nowhere)."""
        if "\x00" in value:
            return []
        path = Path(value).expanduser()
        if path.is_absolute():
            return [path.resolve()]
        out = [(self.base_dir / path).resolve()]
        return out + [path.resolve()] if against_cwd else out

    def file(self, where: str, value: Any, against_cwd: bool = False) -> None:
        """A path that must lie inside the studio's folders (`--runs`, `--data`)."""
        if not isinstance(value, str) or not value:
            return  # a wrong type is the recipe schema's to report
        readings = self._readings(value, against_cwd)
        if not readings or not all(_inside(p, self.files) for p in readings):
            self.problems.append((where, f"{value} is outside the studio's folders"))

    def model(self, where: str, value: Any, catalog: tuple[str, ...]) -> None:
        """A model spec: a catalog name, or an existing folder/file inside the studio's folders or --models."""
        if not isinstance(value, str) or value in catalog:
            return
        readings = [p for p in self._readings(value, against_cwd=True) if p.exists()]
        if not readings or not all(_inside(p, self.models) for p in readings):
            self.problems.append(
                (
                    where,
                    f"`{value}` is not a catalog model ({', '.join(catalog) or 'none'}) nor a model inside the studio's "
                    "folders (--runs, --data, --models); other models are launched from the command line",
                )
            )

    def endpoint(self, where: str, url: str) -> None:
        from tunesmith.studio.guard import is_loopback

        host = urlsplit(url).hostname or ""
        if not is_loopback(host):
            self.problems.append((where, f"{url}: a judge endpoint launched from the studio must be on this machine"))


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    return value if isinstance(value, dict) else {}


def check_launch(data: dict[str, Any], base_dir: Path, files: list[Path], models: list[Path]) -> None:
    """RecipeError listing every field of the raw recipe `data` that points outside the studio or at code."""
    from tunesmith.rag.embed import DEFAULT_EMBEDDER

    c = _Check(base_dir, [Path(f).resolve() for f in files], [Path(m).resolve() for m in models])
    catalog = tuple(CATALOG)
    model, data_section, rag = _section(data, "model"), _section(data, "data"), _section(data, "rag")
    c.model("model.base", model.get("base", DEFAULT_BASE), catalog)
    if model.get("trust_remote_code"):
        c.problems.append(("model.trust_remote_code", REMOTE_CODE))
    c.file("output_dir", data.get("output_dir", "runs/run"))
    train = data_section.get("train")
    for i, path in enumerate(train if isinstance(train, list) else [train]):
        c.file(f"data.train.{i}", path)
    c.file("data.eval", data_section.get("eval"))
    c.file("rag.index", rag.get("index"))
    if rag.get("embedder") not in (None, "", DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}"):
        c.model("rag.embedder", rag.get("embedder"), ())
    c.model("distill.teacher", _section(data, "distill").get("teacher"), catalog)
    c.model("ladder.student", _section(data, "ladder").get("student"), catalog)
    _check_eval(c, _section(data, "eval"), catalog)
    _check_rewards(c, _section(data, "grpo").get("rewards"))
    if c.problems:
        raise RecipeError(c.problems)


def _check_eval(c: _Check, section: dict[str, Any], catalog: tuple[str, ...]) -> None:
    judge = _section(section, "judge").get("model")
    if isinstance(judge, str) and judge.startswith(("http://", "https://")):
        c.endpoint("eval.judge.model", judge)
    else:
        c.model("eval.judge.model", judge, catalog)
    graders = section.get("graders")
    if isinstance(graders, str):
        c.file("eval.graders", graders)
    for name, grader in _graders(graders if isinstance(graders, list) else []):
        if grader.get("type") == "python":
            c.problems.append(
                (f"eval.graders.{name}", "python graders run their code: put them in a graders file inside the studio's folders")
            )
        elif grader.get("type") in ("score_model", "label_model"):
            c.model(f"eval.graders.{name}.model", grader.get("model"), catalog)


def _graders(items: list[Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(path, grader) for every grader, inside `multi` graders too."""
    out: list[tuple[str, dict[str, Any]]] = []
    for i, g in enumerate(items):
        if isinstance(g, dict):
            name = f"{prefix}{g.get('name', i)}"
            out.append((name, g))
            inner = g.get("graders")
            out += _graders(list(inner.values()) if isinstance(inner, dict) else [], f"{name}.")
    return out


def _check_rewards(c: _Check, rewards: Any) -> None:
    for i, reward in enumerate(rewards if isinstance(rewards, list) else []):
        spec = {"type": "custom", "function": reward} if isinstance(reward, str) and ":" in reward else reward
        if not isinstance(spec, dict):
            continue
        if isinstance(spec.get("json_schema"), str):
            c.file(f"grpo.rewards.{i}.json_schema", spec["json_schema"])
        function = spec.get("function")
        if spec.get("type") == "custom" and isinstance(function, str):
            module = function.rpartition(":")[0]
            if not module.endswith(".py"):
                c.problems.append(
                    (
                        f"grpo.rewards.{i}.function",
                        f"`{module}` is a module name: from the studio, a custom reward is a .py file inside the studio's folders",
                    )
                )
            else:
                c.file(f"grpo.rewards.{i}.function", module, against_cwd=True)


def model_problem(spec: str, files: list[Path], models: list[Path]) -> str | None:
    """Why `spec` may not be a base model launched from the studio (None when it may); the rule of `check_launch`."""
    c = _Check(Path.cwd(), [Path(f).resolve() for f in files], [Path(m).resolve() for m in models])
    c.model("model.base", spec, tuple(CATALOG))
    return c.problems[0][1] if c.problems else None

"""YAML config loading for OpenPCDet-style configs, without importing OpenPCDet.

OpenPCDet's own loader (``pcdet.config.cfg_from_yaml_file``) opens ``_BASE_CONFIG_`` and ``DATA_PATH``
relative to the *working directory* and resolves ``_BASE_CONFIG_`` only one level deep. This loader
reads the same files with three deliberate differences:

1. ``_BASE_CONFIG_`` may appear in any mapping, at any depth, and is resolved **recursively** and
   **relative to the file that contains it** (absolute paths are used as given). The key itself is
   removed from the merged result, so a saved merged config is self-contained.
2. Merge rule (base first, then the including file on top): mappings merge key by key, recursively;
   every other value -- scalars **and lists** (``DATA_PROCESSOR``, ``AUG_CONFIG_LIST``,
   ``ANCHOR_GENERATOR_CONFIG``, ...) -- is **replaced wholesale**. To change one entry of a list,
   restate the whole list. This is OpenPCDet's rule too, applied at every level.
3. ``DATA_PATH`` (a key of that name at any depth): an absolute path is kept; a relative path is
   resolved against :func:`project_root` -- never against the working directory. The same rule
   applies to values given through :func:`apply_set_args`.

The result is an :class:`AttrDict` (a ``dict`` subclass with attribute access, like ``EasyDict``),
which OpenPCDet's ``build_network``/``build_dataloader`` accept unchanged.

Example:
    >>> from pcdet_gciou.config import load_config, apply_set_args, config_tag
    >>> cfg = load_config("cfgs/kitti_models/second_gciou.yaml")  # doctest: +SKIP
    >>> apply_set_args(cfg, ["OPTIMIZATION.BATCH_SIZE_PER_GPU", "2"])  # doctest: +SKIP
    >>> config_tag("cfgs/kitti_models/second_gciou.yaml")
    'second_gciou'
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

__all__ = [
    "AttrDict",
    "load_config",
    "apply_set_args",
    "override_data_path",
    "save_config",
    "config_tag",
    "project_root",
    "BASE_KEY",
]

BASE_KEY = "_BASE_CONFIG_"
ROOT_ENV_VAR = "PCDET_GCIOU_ROOT"
_PATH_KEYS = ("DATA_PATH",)


class AttrDict(dict):
    """A ``dict`` whose keys are also attributes; nested mappings (also inside lists) become AttrDicts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, _wrap(value))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def update(self, *args: Any, **kwargs: Any) -> None:  # route through __setitem__ to wrap values
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __reduce__(self):
        return (AttrDict, (dict(self),))

    def to_dict(self) -> dict:
        """Plain nested ``dict``/``list`` copy, e.g. for ``yaml.safe_dump``."""
        return _unwrap(self)


def _wrap(value: Any) -> Any:
    if isinstance(value, AttrDict):
        return value
    if isinstance(value, Mapping):
        return AttrDict(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_wrap(v) for v in value)
    return value


def _unwrap(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unwrap(v) for v in value]
    return value


def project_root() -> Path:
    """Directory that relative ``DATA_PATH`` values are resolved against.

    ``$PCDET_GCIOU_ROOT`` when set, otherwise the checkout that contains this package (the parent of
    ``pcdet_gciou/``, where ``cfgs/`` and ``data/`` live). For a non-editable install, set the variable
    or use absolute paths.
    """
    env = os.environ.get(ROOT_ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[1]


def config_tag(path: str | os.PathLike) -> str:
    """The experiment tag of a config file: its file stem (``cfgs/kitti_models/second.yaml`` -> ``second``)."""
    return Path(path).stem


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"config file not found: {str(path)!r}")
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping at top level, got {type(data).__name__}")
    return data


def _deep_merge(base: dict, override: Mapping) -> dict:
    """``override`` on top of ``base``: mappings merge recursively, everything else (lists too) replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve(node: Any, directory: Path, stack: tuple[Path, ...]) -> Any:
    """Resolve ``_BASE_CONFIG_`` (relative to ``directory``) and ``DATA_PATH`` inside ``node``."""
    if isinstance(node, list):
        return [_resolve(v, directory, stack) for v in node]
    if not isinstance(node, Mapping):
        return node
    own = {key: _resolve(value, directory, stack) for key, value in node.items() if key != BASE_KEY}
    for key in _PATH_KEYS:
        if isinstance(own.get(key), (str, os.PathLike)):
            own[key] = _resolve_data_path(own[key])
    if BASE_KEY not in node:
        return own
    base_ref = node[BASE_KEY]
    if not isinstance(base_ref, (str, os.PathLike)):
        raise TypeError(f"{BASE_KEY} must be a path string, got {base_ref!r}")
    base_path = Path(base_ref).expanduser()
    if not base_path.is_absolute():
        base_path = directory / base_path
    base_path = base_path.resolve()
    if base_path in stack:
        chain = " -> ".join(str(p) for p in (*stack, base_path))
        raise ValueError(f"{BASE_KEY} cycle: {chain}")
    base = _resolve(_read_yaml(base_path), base_path.parent, (*stack, base_path))
    return _deep_merge(base, own)


def _resolve_data_path(value: str | os.PathLike) -> str:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = project_root() / path
    return str(path.resolve())


def load_config(path: str | os.PathLike) -> AttrDict:
    """Load an OpenPCDet-style YAML config with recursive, file-relative ``_BASE_CONFIG_``.

    Args:
        path: the YAML file. A relative path is taken relative to the working directory, as for any
            command-line path; everything *inside* the file is independent of it (see module docstring).

    Returns:
        The merged config as an :class:`AttrDict`, without ``_BASE_CONFIG_`` keys, with ``DATA_PATH``
        absolute.

    Raises:
        ValueError: missing file, non-mapping YAML, or a ``_BASE_CONFIG_`` cycle.
    """
    file = Path(path).expanduser().resolve()
    merged = _resolve(_read_yaml(file), file.parent, (file,))
    return AttrDict(merged)


def _parse_value(text: str, key: str = "") -> Any:
    """A Python literal; a list or mapping (text starting with ``[`` or ``{``) must parse, as a literal or
    strictly as YAML; any other text that is no literal stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if not text.strip().startswith(("[", "{")):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"--set {key}: {text!r} is not a valid YAML list or mapping ({problem})") from None
    if not isinstance(value, (list, dict)):
        raise ValueError(f"--set {key}: {text!r} is not a valid YAML list or mapping")
    return value


def _coerce(key: str, text: str, current: Any) -> Any:
    """Turn the command-line string ``text`` into a value of the same kind as ``current``."""
    value = _parse_value(text, key)
    if isinstance(current, Mapping):
        if isinstance(value, Mapping):
            return value
        updated = dict(current)
        for item in str(text).split(","):
            sub, sep, sub_text = item.partition(":")
            sub = sub.strip()
            if not sep or sub not in current:
                raise ValueError(f"--set {key} {text!r}: expected 'name:value,...' with names in {sorted(current)}")
            updated[sub] = _coerce(f"{key}.{sub}", sub_text.strip(), current[sub])
        return updated
    if isinstance(current, list):
        if isinstance(value, (list, tuple)):
            return list(value)
        items = [s.strip() for s in str(text).split(",")]
        if current:
            return [_coerce(f"{key}[{i}]", s, current[0]) for i, s in enumerate(items)]
        return [_parse_value(s, key) for s in items]
    if current is None or value is None:  # None (YAML null) is how options are switched off, e.g. g: None
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if str(text).lower() in ("true", "false"):
            return str(text).lower() == "true"
        raise ValueError(f"--set {key}: expected a bool (True/False), got {text!r}")
    if isinstance(current, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(current, str):
        return str(text)
    raise ValueError(
        f"--set {key}: expected a {type(current).__name__} like the current value {current!r}, got {text!r}"
    )


def save_config(cfg: Mapping, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as YAML to ``path`` atomically (a temporary file, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(_unwrap(cfg), sort_keys=False))
    os.replace(tmp, path)
    return path


def override_data_path(cfg: AttrDict, path: str | os.PathLike) -> AttrDict:
    """Set ``DATA_CONFIG.DATA_PATH`` (or the top-level ``DATA_PATH`` of a dataset config) from a command-line path
    (``--data_path``), which is taken relative to the working directory like any command-line path."""
    data_cfg = cfg["DATA_CONFIG"] if "DATA_CONFIG" in cfg else cfg
    data_cfg["DATA_PATH"] = str(Path(path).expanduser().resolve())
    return cfg


def apply_set_args(cfg: AttrDict, set_args: Iterable[str] | None) -> AttrDict:
    """Apply OpenPCDet-style ``--set KEY.SUB value ...`` overrides to ``cfg`` in place (and return it).

    Like ``pcdet.config.cfg_from_list``: every key must already exist; the value is parsed with
    ``ast.literal_eval`` (a list or mapping that is no literal must parse strictly as YAML) and must match the
    current value's type (an int is accepted for a float, and ``None`` for anything, since that is how options
    such as GCIoU's ``g`` are switched off);
    a mapping accepts ``"name:value,name:value"`` and a list accepts ``"a,b,c"`` or a literal list.
    A relative ``DATA_PATH`` is resolved against :func:`project_root`.

    Raises:
        ValueError: odd number of items, unknown key (the message lists the keys available there),
            or a value of the wrong type.
    """
    items = list(set_args or [])
    if len(items) % 2:
        raise ValueError(f"--set expects KEY VALUE pairs, got an odd number of items: {items}")
    for key, text in zip(items[0::2], items[1::2]):
        parts = str(key).split(".")
        node = cfg
        for depth, part in enumerate(parts):
            if not isinstance(node, Mapping) or part not in node:
                where = ".".join(parts[:depth]) or "<root>"
                available = sorted(node) if isinstance(node, Mapping) else []
                raise ValueError(f"--set {key}: no key {part!r} under {where}; available: {available}")
            if depth < len(parts) - 1:
                node = node[part]
        leaf = parts[-1]
        value = _coerce(key, str(text), node[leaf])
        if leaf in _PATH_KEYS and isinstance(value, str):
            value = _resolve_data_path(value)
        node[leaf] = value
    return cfg

"""Reading configuration files (YAML or TOML) and merging ``include`` files into one document.

The format is chosen by extension like the original: ``.yaml``/``.yml`` is YAML, anything else TOML. YAML
nulls are dropped (the original converts YAML through TOML, which has no null), so ``key: ~`` means "use
the default". Includes are merged in order: tables recursively, arrays concatenated (so an include can add
users to a pool), scalars replaced by the later file. The merge remembers which file every key came from,
so that an error in an included file names that file, not the main one.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pg_doorman.config.errors import ConfigError, KeyPath, format_key_path, format_problem

Document = dict[str, object]


@dataclass(slots=True)
class MergedSource:
    """The merged document plus, for every key and list item, the file that defined it."""

    main_file: str
    data: Document = field(default_factory=dict)
    origins: dict[KeyPath, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def file_of(self, path: KeyPath) -> str:
        """The file that set ``path`` (or its closest recorded ancestor); the main file by default."""
        for end in range(len(path), 0, -1):
            origin = self.origins.get(path[:end])
            if origin is not None:
                return origin
        return self.main_file


def is_yaml_path(path: Path) -> bool:
    """``.yaml``/``.yml`` means YAML; every other name is TOML, as in the original."""
    return path.suffix.lower() in (".yaml", ".yml")


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated in one mapping: PyYAML would silently keep the last one,
    which hides copy-paste mistakes (TOML already rejects them)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` keys may legitimately be overridden
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable key: SafeConstructor reports it itself
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _normalize_yaml(value: object) -> object:
    """Make YAML look like TOML: string keys, no nulls."""
    if isinstance(value, dict):
        return {_yaml_key(k): _normalize_yaml(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_normalize_yaml(item) for item in value if item is not None]
    return value


def _yaml_key(key: object) -> str:
    if isinstance(key, bool):  # YAML 1.1 reads a bare `on:`/`yes:` key as a boolean
        return "true" if key else "false"
    return str(key)


def parse_document(path: Path, display: str) -> Document:
    """Parse one file into a plain mapping; raise :class:`ConfigError` naming the file on any failure."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([format_problem(display, (), "file not found")])
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([format_problem(display, (), f"cannot read file: {exc}")])
    if is_yaml_path(path):
        try:
            loaded = yaml.load(text, Loader=_StrictYamlLoader)  # a SafeLoader subclass: no arbitrary objects
        except yaml.YAMLError as exc:
            raise ConfigError([format_problem(display, (), f"invalid YAML: {_one_line(str(exc))}")])
        document = _normalize_yaml(loaded) if loaded is not None else {}
    else:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([format_problem(display, (), f"invalid TOML: {exc}")])
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise ConfigError([format_problem(display, (), f"expected a mapping of sections at the top, got {kind}")])
    return document


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _record(value: object, file: str, path: KeyPath, origins: dict[KeyPath, str]) -> None:
    origins[path] = file
    if isinstance(value, dict):
        for key, item in value.items():
            _record(item, file, (*path, key), origins)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _record(item, file, (*path, index), origins)


def _merge(target: Document, incoming: Document, file: str, path: KeyPath, source: MergedSource) -> None:
    for key, value in incoming.items():
        key_path = (*path, key)
        if key not in target:
            target[key] = value
            _record(value, file, key_path, source.origins)
            continue
        current = target[key]
        if isinstance(current, dict) and isinstance(value, dict):
            _merge(current, value, file, key_path, source)
        elif isinstance(current, list) and isinstance(value, list):
            offset = len(current)
            current.extend(value)
            for index, item in enumerate(value):
                _record(item, file, (*key_path, offset + index), source.origins)
        elif isinstance(current, dict | list) or isinstance(value, dict | list):
            where = source.file_of(key_path)
            source.problems.append(
                format_problem(
                    file,
                    key_path,
                    f"cannot merge {type(value).__name__} into {type(current).__name__} defined in {where}",
                )
            )
        else:
            target[key] = value
            _record(value, file, key_path, source.origins)


def _include_files(document: Document, display: str, problems: list[str]) -> list[str]:
    """The ``include.files`` list of the main file (validated), removed from the document."""
    section = document.pop("include", None)
    if section is None:
        return []
    if not isinstance(section, dict):
        problems.append(format_problem(display, ("include",), 'expected a table like {files = ["a.yaml"]}'))
        return []
    for key in section:
        if key != "files":
            problems.append(format_problem(display, ("include", key), "unknown key; expected only 'files'"))
    files = section.get("files", [])
    if not isinstance(files, list) or not all(isinstance(item, str) for item in files):
        problems.append(format_problem(display, ("include", "files"), "expected a list of file paths"))
        return []
    return list(files)


def load_source(path: Path) -> MergedSource:
    """Read ``path`` and its includes into one :class:`MergedSource`.

    Include paths are relative to the directory of the main file (not the working directory), so a
    config and its fragments can move together. Included files may not include further files.
    """
    display = str(path)
    source = MergedSource(main_file=display, files=[display])
    main = parse_document(path, display)
    includes = _include_files(main, display, source.problems)
    _merge(source.data, main, display, (), source)
    for entry in includes:
        include_path = path.parent / entry
        include_display = str(include_path)
        try:
            fragment = parse_document(include_path, include_display)
        except ConfigError as exc:
            source.problems.extend(exc.problems)
            continue
        if "include" in fragment:
            source.problems.append(format_problem(include_display, ("include",), "nested includes are not supported"))
            del fragment["include"]
        source.files.append(include_display)
        _merge(source.data, fragment, include_display, (), source)
    return source


__all__ = ["Document", "MergedSource", "format_key_path", "is_yaml_path", "load_source", "parse_document"]

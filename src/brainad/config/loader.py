"""Loading ``params.yaml`` into the typed sections (:mod:`brainad.config.sections`), strictly.

:func:`load_study` deep-merges ``defaults`` with the study's overrides and builds frozen
dataclasses; an unknown, missing or mistyped key raises :class:`ConfigError` naming its path.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from brainad.config.sections import ConfigError, StudyConfig
from brainad.config.volume_study import VolumeStudyConfig


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (lists → tuples)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{key}: {value!r} is not one of {list(allowed)}; fix it in params.yaml"
            )
        return value
    if origin in (tuple,):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(arg, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {_type_name(tp)}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported annotation {_type_name(tp)}")  # programming error


def from_dict(cls: type, data: Any, key: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from a mapping, strictly.

    Raises:
        ConfigError: on an unknown, missing or mistyped key; the message names the key path.
    """
    where = key or "<root>"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; allowed keys are {names} (check for a typo)"
        )
    missing = [n for n in names if n not in data]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}; add them to params.yaml")
    prefix = f"{key}." if key else ""
    return cls(**{n: _convert(hints[n], data[n], prefix + n) for n in names})


def _merge(base: dict, override: dict, key: str) -> dict:
    """Deep-merge ``override`` into ``base``; an override key absent from ``base`` is an error."""
    out = dict(base)
    for k, v in override.items():
        path = f"{key}.{k}"
        if k not in base:
            raise ConfigError(
                f"{path}: unknown key; a study can only override keys that exist under defaults"
            )
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{path}: expected a mapping, got {v!r}")
            out[k] = _merge(base[k], v, path)
        else:
            out[k] = v
    return out


_TOP_LEVEL = {"defaults", "studies", "volume_studies"}


def read_params(path: str | Path = "params.yaml") -> dict:
    """Read ``params.yaml`` and check its top-level keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not {"defaults", "studies"} <= set(raw) <= _TOP_LEVEL:
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ConfigError(
            f"{path}: top level must have 'defaults' and 'studies' (and optionally "
            f"'volume_studies'), got {got}"
        )
    if not isinstance(raw["studies"], dict) or not raw["studies"]:
        raise ConfigError(f"{path}: 'studies' must map study names to their overrides")
    return raw


def study_names(path: str | Path = "params.yaml") -> list[str]:
    """Names of the studies defined in ``params.yaml``."""
    return list(read_params(path)["studies"])


def load_study(study: str, path: str | Path = "params.yaml") -> StudyConfig:
    """Load one study: ``defaults`` deep-merged with ``studies.<study>``, checked strictly."""
    raw = read_params(path)
    if "name" in raw["defaults"]:
        raise ConfigError("defaults.name: 'name' is reserved (it is the study's key under studies)")
    try:  # defaults must be valid on their own, even where every study overrides a value
        from_dict(StudyConfig, {"name": "defaults", **raw["defaults"]}, "")
    except ConfigError as exc:
        raise ConfigError(f"defaults.{exc}") from None
    if study not in raw["studies"]:
        raise ConfigError(
            f"studies.{study}: no such study in {path}; known studies: {list(raw['studies'])}"
        )
    overrides = raw["studies"][study] or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"studies.{study}: expected a mapping of section overrides")
    sections = [f.name for f in dataclasses.fields(StudyConfig) if f.name != "name"]
    absent = [s for s in sections if s not in overrides]
    if absent:
        raise ConfigError(
            f"studies.{study}: missing section(s) {absent}; list every section (use {{}} for "
            "no overrides) so that DVC tracks each study's sections separately"
        )
    merged = _merge(raw["defaults"], overrides, f"studies.{study}")
    try:
        return from_dict(StudyConfig, {"name": study, **merged}, "")
    except ConfigError as exc:
        raise ConfigError(
            f"{exc} [study '{study}': defaults merged with studies.{study}]"
        ) from None


def load_volume_study(study: str, path: str | Path = "params.yaml") -> VolumeStudyConfig:
    """Load one volume study (``volume_studies.<study>``: every key stated, no defaults)."""
    studies = read_params(path).get("volume_studies") or {}
    if study not in studies:
        raise ConfigError(
            f"volume_studies.{study}: no such volume study in {path}; known: {list(studies)}"
        )
    body = studies[study]
    if not isinstance(body, dict):
        raise ConfigError(f"volume_studies.{study}: expected a mapping of sections")
    config = from_dict(VolumeStudyConfig, {"name": study, **body}, f"volume_studies.{study}")
    names = [d.name for d in config.detectors]
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"volume_studies.{study}.detectors: names must be unique, got {names}")
    _check_rows(config, f"volume_studies.{study}")
    return config


def _check_rows(config: VolumeStudyConfig, where: str) -> None:
    """Every row name unique; a combination adds at least two rows defined before it."""
    earlier = [
        *(d.name for d in config.detectors),
        *config.models.names,
        *(v.name for v in config.variants.rows),
    ]
    for combination in config.combinations:
        unknown = [p for p in combination.parts if p not in earlier]
        if len(combination.parts) < 2 or unknown:
            raise ConfigError(
                f"{where}.combinations.{combination.name}: parts must name at least two rows "
                f"defined before it (detectors, models.names, variants.rows); unknown: {unknown}"
            )
        earlier.append(combination.name)
    twice = sorted({n for n in earlier if earlier.count(n) > 1})
    if twice:
        raise ConfigError(
            f"{where}: row names must be unique across detectors, models.names, "
            f"variants.rows and combinations; repeated: {twice}"
        )


def to_dict(config: Any) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return _jsonable(dataclasses.asdict(config))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value

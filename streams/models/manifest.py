"""The model manifest: every model file singtome can fetch, where it goes, and how it is checked.

Three sources, merged by name (a later one replaces an earlier entry of the same name):

1. ``manifest.json`` beside this module: the RVC files (content encoders, RMVPE, the v2
   pretrained G/D), with the publisher's sha256;
2. the separation models audio-separator knows, read from the model lists its installation ships
   (``uvr-resources``' ``model_list_links.json`` and audio-separator's own ``models.json``), never
   copied here by hand;
3. the user's own manifest, ``SINGTOME_MODEL_MANIFEST``: a JSON list of objects of the same shape.

An entry's file lives at ``<model_dir>/<path>``; ``path`` defaults to
``<folder of its kind>/<name>``.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Iterator
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

Kind = Literal["content-encoder", "pitch", "pretrained", "separation", "separation-config", "other"]
Origin = Literal["builtin", "audio-separator", "user"]
# The settings (their path in streams.settings.Settings) a pulled file is the default of.
SettingName = Literal["models.hubert_path", "models.rmvpe_path", "models.pretrained_dir"]

# Where an entry without a ``path`` goes, by kind (relative to the model dir). The UVR folder is
# the one the separator's uvr backend reads.
KIND_FOLDERS: dict[str, str] = {
    "content-encoder": "rvc",
    "pitch": "rvc",
    "pretrained": "rvc/pretrained_v2",
    "separation": "uvr",
    "separation-config": "uvr",
    "other": "other",
}
HF_HOST = "huggingface.co"
AUDIO_SEPARATOR_RELEASES = (
    "https://github.com/nomadkaraoke/python-audio-separator/releases/download/model-configs"
)
_UVR_LICENCE = "not stated in audio-separator's model list (UVR community model; see its author)"
_VIP_LICENCE = "UVR VIP model: its author (Anjok07) intends it for UVR's subscribers"


class ManifestError(ValueError):
    """A manifest that cannot be read or does not have the documented shape."""


class ModelEntry(BaseModel):
    """One model file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    kind: Kind
    url: str
    size: int | None = Field(None, gt=0, description="Bytes; None: pinned on first download.")
    sha256: str | None = Field(None, description="The publisher's checksum, when it states one.")
    licence: str
    path: str | None = Field(None, description="Where it goes, relative to the model dir.")
    setting: SettingName | None = Field(
        None, description="The setting this file is the default of when present."
    )
    requires: list[str] = Field(default_factory=list, description="Other entries it needs.")
    note: str | None = None
    origin: Origin = "user"

    @field_validator("setting", mode="before")
    @classmethod
    def _setting_path(cls, value: object) -> object:
        """Manifests written before the settings had groups name the field alone."""
        if isinstance(value, str) and "." not in value:
            return f"models.{value}"
        return value

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if "/" in value or "\\" in value or value in {".", ".."} or value.strip() != value:
            raise ValueError(f"a model name is a plain name, got {value!r}")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(f"url must be http(s)://host/path, got {value!r}")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digest = value.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"sha256 must be 64 hex digits, got {value!r}")
        return digest

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ValueError(f"path must be relative to the model dir, got {value!r}")
        return str(path)

    @property
    def relative_path(self) -> str:
        return self.path or f"{KIND_FOLDERS[self.kind]}/{self.name}"

    def local_path(self, model_dir: Path) -> Path:
        return Path(model_dir) / self.relative_path


_ENTRIES = TypeAdapter(list[ModelEntry])


def parse_entries(text: str, origin: Origin, source: str) -> list[ModelEntry]:
    """Entries from a manifest's JSON text (a list of objects); ManifestError says what is wrong."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source} is not JSON: {exc}") from None
    if not isinstance(raw, list):
        raise ManifestError(f"{source} must hold a JSON list of model objects")
    for item in raw:
        if isinstance(item, dict):
            item.pop("origin", None)  # set here, never by the file
            # Which stages use a file follows from its kind (agents/registry.py declares the kinds
            # each stage reads); a manifest written when entries named stages still loads.
            item.pop("used_by", None)
    try:
        entries = _ENTRIES.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ManifestError(f"{source}: entry {where}: {first['msg']}") from None
    return [e.model_copy(update={"origin": origin}) for e in entries]


@lru_cache(maxsize=1)
def builtin_entries() -> tuple[ModelEntry, ...]:
    text = (Path(__file__).with_name("manifest.json")).read_text(encoding="utf-8")
    return tuple(parse_entries(text, "builtin", "the built-in manifest"))


def user_entries(manifest: Path | None) -> list[ModelEntry]:
    if manifest is None:
        return []
    try:
        text = Path(manifest).read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"SINGTOME_MODEL_MANIFEST={manifest}: {exc.strerror}") from None
    return parse_entries(text, "user", f"SINGTOME_MODEL_MANIFEST={manifest}")


# --------------------------------------------------------------------------------------------------
# the separation models audio-separator knows
# --------------------------------------------------------------------------------------------------


def _package_dir(name: str) -> Path | None:
    """A package's folder without importing it (audio-separator's import is heavy)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _kind_of(file_name: str) -> Kind:
    return "separation-config" if file_name.lower().endswith(".yaml") else "separation"


class _Catalogue:
    """Collects files of model groups (a model and the files it needs) in first-seen order."""

    def __init__(self) -> None:
        self.urls: dict[str, str] = {}
        self.requires: dict[str, list[str]] = {}
        self.notes: dict[str, str] = {}
        self.vip: set[str] = set()

    def add_group(self, friendly: str, files: dict[str, str], primary: str) -> None:
        for name, url in files.items():
            self.urls.setdefault(name, url)
        needed = self.requires.setdefault(primary, [])
        needed.extend(n for n in files if n != primary and n not in needed)
        self.notes.setdefault(primary, friendly)
        if "VIP" in friendly:
            self.vip.add(primary)

    def entries(self, origin: Origin) -> list[ModelEntry]:
        out = []
        for name, url in self.urls.items():
            try:
                out.append(
                    ModelEntry(
                        name=name,
                        kind=_kind_of(name),
                        url=url,
                        licence=_VIP_LICENCE if name in self.vip else _UVR_LICENCE,
                        requires=self.requires.get(name, []),
                        note=self.notes.get(name),
                        origin=origin,
                    )
                )
            except ValidationError:
                continue  # a malformed line of a third-party list is left out, not fatal
        return out


def _primary(friendly: str, files: dict[str, str]) -> str:
    # Demucs models are named by their .yaml (which lists the .th weights it needs); every other
    # group is named by its first file, the weights, whose config comes after it.
    if friendly.startswith("Demucs"):
        return next((n for n in files if n.endswith(".yaml")), next(iter(files)))
    return next(iter(files))


@lru_cache(maxsize=1)
def separation_entries() -> tuple[ModelEntry, ...]:
    """The UVR/Roformer/Demucs files of audio-separator's model list, with their sources."""
    catalogue = _Catalogue()
    resources = _package_dir("UVR_resources")
    if resources is not None and (resources / "model_list_links.json").is_file():
        links = json.loads((resources / "model_list_links.json").read_text(encoding="utf-8"))
        for groups in links.values():
            if not isinstance(groups, dict):
                continue
            for friendly, files in groups.items():
                if isinstance(files, dict) and files:
                    catalogue.add_group(friendly, files, _primary(friendly, files))
    separator = _package_dir("audio_separator")
    if separator is not None and (separator / "models.json").is_file():
        own = json.loads((separator / "models.json").read_text(encoding="utf-8"))
        for groups in own.values():
            for friendly, value in groups.items():
                # {name: file} for VR/MDX, {name: {weights: config}} for MDX23C/Roformer.
                names = [value] if isinstance(value, str) else [*value, *value.values()]
                files = {
                    n: catalogue.urls.get(n, f"{AUDIO_SEPARATOR_RELEASES}/{n}") for n in names if n
                }
                if files:
                    catalogue.add_group(friendly, files, names[0])
    return tuple(catalogue.entries("audio-separator"))


# --------------------------------------------------------------------------------------------------
# the merged manifest
# --------------------------------------------------------------------------------------------------


class Manifest:
    """The merged entries, by name, in source order."""

    def __init__(self, entries: Iterable[ModelEntry]) -> None:
        self._by_name: dict[str, ModelEntry] = {}
        for entry in entries:
            self._by_name.pop(entry.name, None)  # a later source wins and moves to its place
            self._by_name[entry.name] = entry

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> ModelEntry | None:
        return self._by_name.get(name)

    def select(self, patterns: Iterable[str]) -> list[ModelEntry]:
        """Entries named by each pattern (a name or a glob such as ``'f0*40k.pth'``), in the
        order asked, then everything they require; KeyError names a pattern matching nothing."""
        chosen: dict[str, ModelEntry] = {}
        for pattern in patterns:
            hits = [e for e in self if fnmatchcase(e.name, pattern)]
            if not hits:
                raise KeyError(pattern)
            for entry in hits:
                self._with_requirements(entry, chosen)
        return list(chosen.values())

    def _with_requirements(self, entry: ModelEntry, chosen: dict[str, ModelEntry]) -> None:
        if entry.name in chosen:
            return
        chosen[entry.name] = entry
        for name in entry.requires:
            needed = self.get(name)
            if needed is not None:
                self._with_requirements(needed, chosen)

    def for_setting(self, setting: SettingName) -> list[ModelEntry]:
        return [e for e in self if e.setting == setting]


def load_manifest(user_manifest: Path | None, *, separation: bool = True) -> Manifest:
    """Built-in + (optionally) audio-separator's list + the user's manifest."""
    sources: list[ModelEntry] = list(builtin_entries())
    if separation:
        sources.extend(separation_entries())
    sources.extend(user_entries(user_manifest))
    return Manifest(sources)


def source_url(entry: ModelEntry, mirror: str | None, hf_endpoint: str | None) -> str:
    """Where to fetch ``entry`` from: a private mirror with the same paths wins, then
    ``HF_ENDPOINT`` for Hugging Face files, then the publisher's URL."""
    parts = urlsplit(entry.url)
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    if mirror:
        return mirror.rstrip("/") + tail
    if hf_endpoint and parts.netloc == HF_HOST:
        return hf_endpoint.rstrip("/") + tail
    return entry.url


def default_model_paths(model_dir: Path, user_manifest: Path | None) -> dict[str, Path]:
    """For each setting a pulled file can stand in for, the first of its entries present in
    ``model_dir`` (a pretrained file gives its folder). A broken user manifest is left out here:
    `singtome models list` reports it."""
    try:
        manifest = load_manifest(user_manifest, separation=False)
    except ManifestError:
        manifest = load_manifest(None, separation=False)
    found: dict[str, Path] = {}
    for setting in get_args(SettingName):
        for entry in manifest.for_setting(setting):
            path = entry.local_path(model_dir)
            if path.is_file():
                found[setting] = path.parent if setting == "models.pretrained_dir" else path
                break
    return found

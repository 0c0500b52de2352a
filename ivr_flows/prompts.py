"""Prompt audio from the flows' text: which sound files ``cti prompts build`` makes, where, and from what words.

Pure planning; :mod:`cti.prompts` reads the disk into a snapshot and runs the synthesizer. A flow names each
prompt's sound as Asterisk does, without an extension (``hotline/{lang}/main_menu``), and gives its words
per language. For every name the interpreter can play, :func:`targets` says which languages' words it
holds:

* ``{lang}`` in the name, or one name per language (``file: {zh: ..., en: ...}``): one file per language,
  ``<sounds>/hotline/zh/main_menu.wav`` with the Mandarin words;
* one name for every language (``file: hotline/welcome``): one recording in all of them, in the flow's
  language order, as a bilingual greeting played before the caller has chosen is meant to be.

The file goes to ``<sounds>/<name>.wav``: 8 kHz mono 16-bit PCM, which Asterisk 22's ``format_wav``
reads as ``slin`` and plays to any channel without surprise. Asterisk looks for ``<sounds>/<channel
language>/<name>.*`` first and ``<sounds>/<name>.*`` after it, so a studio recording in either place,
in any format, is what callers hear; and when both a ``.wav`` and another format exist Asterisk picks the
cheaper one to transcode, which could be ours. So:

* **a recorded file always wins**: a target with a recording (``<name>.<any ext>``, or
  ``<lang>/<name>.<any ext>`` for each language that hears it) is not made, and a file we made there
  before is removed; recorded for some of its languages only, the made file stays for the others;
* **a made file is marked**: the manifest (:data:`MANIFEST` in the sounds directory) holds, per file, the
  digest of the words, voice and format it was made from and the SHA-256 of its bytes. A file whose bytes
  no longer match (a recording copied over ours) is a recording from then on; one whose words changed is
  made again; one up to date is kept. A file made but not yet in the manifest (a crash between the two
  writes) is taken for a recording: the safe way round.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ivr_flows.model import Flow

__all__ = [
    "DEFAULT_VOICES",
    "FORMAT",
    "MANIFEST",
    "Action",
    "ManifestEntry",
    "Note",
    "Plan",
    "Segment",
    "Target",
    "candidates",
    "parse_manifest",
    "plan",
    "render_manifest",
    "targets",
]

#: The extension of the files made, and what is in them (part of each file's digest: a change remakes them).
FORMAT: Final = "wav"
AUDIO: Final = "wav/pcm_s16le/8000/mono"
#: The manifest of made files, in the sounds directory (a dot file: Asterisk never plays it).
MANIFEST: Final = ".cti_prompts.json"
#: espeak-ng voices by flow language; any other language is passed as it is (espeak-ng knows ~100).
DEFAULT_VOICES: Final[Mapping[str, str]] = {"zh": "cmn", "en": "en-us", "yue": "yue", "zh_TW": "cmn"}


@dataclass(frozen=True, slots=True)
class Segment:
    """Words in one language, spoken by one voice."""

    language: str
    text: str
    voice: str


@dataclass(frozen=True, slots=True)
class Target:
    """One sound the flows can play and the words to make it from.

    ``name`` is the Asterisk sound name (no extension); ``file`` the path made under the sounds directory;
    ``languages`` the flow languages that hear this name (where a recording for them also counts)."""

    name: str
    languages: tuple[str, ...]
    segments: tuple[Segment, ...]
    uses: tuple[str, ...]  # "flow:prompt", for messages

    @property
    def file(self) -> str:
        return f"{self.name}.{FORMAT}"

    @property
    def digest(self) -> str:
        """What the file is made from: a change of words, voice or format makes it again."""
        blob = json.dumps([AUDIO, [[s.language, s.voice, s.text] for s in self.segments]], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


NoteKind = Literal["no_text", "conflict", "absolute", "orphan", "partly_recorded"]


@dataclass(frozen=True, slots=True)
class Note:
    """Something the build cannot do or a person should know; ``name`` is the sound (or file) concerned."""

    kind: NoteKind
    name: str
    message: str

    def __str__(self) -> str:
        return f"{self.name}: {self.message} [{self.kind}]"


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    digest: str
    sha256: str
    uses: tuple[str, ...] = ()


ActionKind = Literal["make", "keep", "recorded", "remove"]


@dataclass(frozen=True, slots=True)
class Action:
    """``make`` (``why``: ``missing`` or ``changed``), ``keep`` (made and up to date), ``recorded`` (a recording
    is there: ``files``), ``remove`` (a file we made, superseded by a recording or used by no flow)."""

    kind: ActionKind
    file: str
    target: Target | None = None
    why: str = ""
    files: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    notes: tuple[Note, ...]
    #: The manifest once every action is done (``make`` entries get their sha256 when made).
    keep_entries: Mapping[str, ManifestEntry] = field(default_factory=dict)

    def of(self, kind: ActionKind) -> list[Action]:
        return [a for a in self.actions if a.kind == kind]


# --------------------------------------------------------------------------- what the flows can play


def _names(flow: Flow, prompt_file: str | Mapping[str, str]) -> dict[str, list[str]]:
    """Sound name -> the flow languages that hear it (see the module doc)."""
    out: dict[str, list[str]] = {}
    for language in flow.languages:
        if isinstance(prompt_file, str):
            name = prompt_file.replace("{lang}", language)
        elif language in prompt_file:
            name = prompt_file[language]
        else:
            continue  # the interpreter plays another language's file: that file is made for its own language
        out.setdefault(name, []).append(language)
    return out


def targets(flows: Iterable[Flow], voices: Mapping[str, str] | None = None) -> tuple[list[Target], list[Note]]:
    """Every sound the flows can play, once, in flow id then prompt order; notes for words that are missing,
    for two prompts that give one sound different words (the first flow in id order wins), and for sound names
    outside the sounds directory."""
    chosen = {**DEFAULT_VOICES, **(voices or {})}
    found: dict[str, Target] = {}
    notes: list[Note] = []
    for flow in sorted(flows, key=lambda f: f.id):
        for prompt_id, prompt in flow.prompts.items():
            use = f"{flow.id}:{prompt_id}"
            for name, languages in _names(flow, prompt.file).items():
                if name.startswith("/") or name.endswith("/"):
                    notes.append(Note("absolute", name, f"{use}: not a sound name under the sounds directory; "
                                                        "make this file yourself"))
                    continue
                segments = tuple(Segment(lang, prompt.text[lang].strip(), chosen.get(lang, lang))
                                 for lang in languages if prompt.text.get(lang, "").strip())
                for lang in languages:
                    if not prompt.text.get(lang, "").strip():
                        notes.append(Note("no_text", name, f"{use}: no {lang} text to speak"))
                if not segments:
                    continue
                target = Target(name, tuple(languages), segments, (use,))
                before = found.get(name)
                if before is None:
                    found[name] = target
                elif before.segments == segments:
                    found[name] = Target(name, tuple(dict.fromkeys(before.languages + target.languages)),
                                         segments, (*before.uses, use))
                else:
                    notes.append(Note("conflict", name, f"{use} has other words for it than {before.uses[0]}; "
                                                        f"made from {before.uses[0]}'s"))
    return list(found.values()), notes


def candidates(target: Target) -> tuple[str, ...]:
    """The sound names (relative, no extension) where a sound of ``target`` counts: its own name, and the same
    name in each of its languages' directories (Asterisk plays ``<sounds>/<lang>/<name>`` first). A disk
    snapshot lists every ``<candidate>.<ext>`` file."""
    return (target.name, *(f"{lang}/{target.name}" for lang in target.languages))


# --------------------------------------------------------------------------- the plan


def plan(wanted: Iterable[Target], disk: Mapping[str, str | None], manifest: Mapping[str, ManifestEntry],
         *, prune: bool = False, notes: Iterable[Note] = ()) -> Plan:
    """What to do for each target, given ``disk`` (relative path -> SHA-256 of the bytes for the files a build
    may own: each target's ``file`` and each manifest file; None for any other sound file found) and the
    manifest as read. ``prune``: also remove made files that no flow plays any more."""
    actions: list[Action] = []
    entries: dict[str, ManifestEntry] = {}
    out_notes = list(notes)
    claimed: set[str] = set()
    for target in wanted:
        file = target.file
        claimed.add(file)
        entry = manifest.get(file)
        on_disk = file in disk
        ours = on_disk and entry is not None and disk[file] is not None and disk[file] == entry.sha256
        # A recording under the name itself is heard in every language; one in <lang>/ only by that language.
        exact = [p for p in _files_of(target.name, disk) if p != file]
        if on_disk and not ours:
            exact.insert(0, file)
        per_language = {lang: _files_of(f"{lang}/{target.name}", disk) for lang in target.languages}
        if exact or all(per_language.values()):
            recordings = exact + [p for found in per_language.values() for p in found]
            actions.append(Action("recorded", file, target, files=tuple(recordings)))
            if ours:
                actions.append(Action("remove", file, target, why=f"superseded by {recordings[0]}"))
            continue
        partly = [lang for lang, found in per_language.items() if found]
        if partly:
            out_notes.append(Note("partly_recorded", target.name,
                                  f"recorded for {', '.join(partly)} only: the made file serves the other languages"))
        if ours and entry is not None and entry.digest == target.digest:
            actions.append(Action("keep", file, target))
            entries[file] = ManifestEntry(entry.digest, entry.sha256, target.uses)
        else:
            actions.append(Action("make", file, target, why="changed" if ours else "missing"))
    for file, entry in sorted(manifest.items()):
        if file in claimed:
            continue
        ours = file in disk and disk[file] == entry.sha256
        if not ours:
            continue  # gone, or replaced by a recording: no longer ours to speak of
        if prune:
            actions.append(Action("remove", file, why="no flow plays it"))
        else:
            out_notes.append(Note("orphan", file, "made for a prompt no flow plays now (--prune removes it)"))
            entries[file] = entry
    return Plan(tuple(actions), tuple(out_notes), entries)


def _files_of(stem: str, disk: Mapping[str, str | None]) -> list[str]:
    """``<stem>.<ext>`` files of the snapshot, any extension (Asterisk picks among the formats it finds)."""
    found = []
    for path in disk:
        head, dot, ext = path.rpartition(".")
        if dot and head == stem and ext and "/" not in ext:
            found.append(path)
    return sorted(found)


# --------------------------------------------------------------------------- the manifest file


def parse_manifest(text: str) -> dict[str, ManifestEntry]:
    """The manifest's JSON; anything unreadable is an empty manifest (every file is then a recording: safe)."""
    try:
        data: Any = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    out: dict[str, ManifestEntry] = {}
    for file, raw in files.items():
        if (isinstance(file, str) and isinstance(raw, dict) and isinstance(raw.get("digest"), str)
                and isinstance(raw.get("sha256"), str)):
            uses = raw.get("uses")
            out[file] = ManifestEntry(raw["digest"], raw["sha256"],
                                      tuple(u for u in uses if isinstance(u, str)) if isinstance(uses, list) else ())
    return out


def render_manifest(entries: Mapping[str, ManifestEntry]) -> str:
    files = {file: {"digest": e.digest, "sha256": e.sha256, "uses": list(e.uses)}
             for file, e in sorted(entries.items())}
    return json.dumps({"about": "sound files made by `cti prompts build` from the IVR flows' text; a file not "
                                "listed here, or whose bytes differ, is a recording and is never overwritten",
                       "audio": AUDIO, "files": files}, ensure_ascii=False, indent=1) + "\n"

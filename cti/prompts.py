"""``cti prompts build``: speak the flows' prompt text into Asterisk sound files where no recording exists yet.

:mod:`ivr_flows.prompts` decides (which files, from which words, what counts as recorded); this module
reads the disk for it, runs the synthesizer, and writes. Speech is Debian's ``espeak-ng`` (``apt-get
install espeak-ng sox``): robotic, but every language a flow is likely to have, and enough for a new flow
to be heard end to end before a studio records it. ``sox`` turns its 22 kHz output into 8 kHz mono
16-bit WAV (:data:`ivr_flows.prompts.AUDIO`) and joins the languages of a shared recording with a pause.

Each file is made in a temporary file beside its target and renamed over it, and the manifest is written
(the same way) after every file, so an interrupted build leaves whole files and a manifest that knows them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ivr_flows import Flow
from ivr_flows.prompts import (
    MANIFEST,
    Action,
    ManifestEntry,
    Plan,
    Target,
    candidates,
    parse_manifest,
    plan,
    render_manifest,
    targets,
)

__all__ = ["BuildReport", "SynthesisError", "Synthesizer", "build_prompts", "describe", "espeak_sox", "plan_for",
           "read_manifest", "snapshot"]

#: Between the languages of one shared recording.
PAUSE_S: Final = 0.6
#: Words per minute: espeak-ng's 175 is quick for a phone menu.
SPEED_WPM: Final = 150
_STEP_TIMEOUT_S: Final = 60.0

#: Makes ``out`` (a .wav path) from the target's segments.
Synthesizer = Callable[[Target, Path], None]


class SynthesisError(Exception):
    """The synthesizer is missing or failed; the message says which program and why."""


# --------------------------------------------------------------------------- reading the disk


def snapshot(sounds: Path, wanted: Iterable[Target], manifest: Mapping[str, ManifestEntry]) -> dict[str, str | None]:
    """The files :func:`ivr_flows.prompts.plan` needs to see: every ``<candidate>.<ext>`` of each target, and
    every manifest file; SHA-256 for the files a build may own (each target's own file, the manifest's)."""
    wanted = list(wanted)
    mine = {t.file for t in wanted} | set(manifest)
    found: dict[str, str | None] = {}
    listed: dict[Path, list[str]] = {}
    for target in wanted:
        for stem in candidates(target):
            directory, _, base = stem.rpartition("/")
            folder = sounds / directory if directory else sounds
            if folder not in listed:
                try:
                    listed[folder] = sorted(e.name for e in os.scandir(folder) if e.is_file())
                except OSError:
                    listed[folder] = []
            for name in listed[folder]:
                if name.rpartition(".")[0] == base and not name.startswith("."):
                    found[f"{directory}/{name}" if directory else name] = None
    for file in manifest:
        if (sounds / file).is_file():
            found[file] = None
    for file in found:
        if file in mine:
            found[file] = _sha256(sounds / file)
    return found


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def read_manifest(sounds: Path) -> dict[str, ManifestEntry]:
    try:
        return parse_manifest((sounds / MANIFEST).read_text(encoding="utf-8"))
    except OSError:
        return {}


def plan_for(flows: Iterable[Flow], sounds: Path, *, voices: Mapping[str, str] | None = None,
             prune: bool = False) -> Plan:
    """What a build of ``flows`` into ``sounds`` would do, without doing it (``--dry-run``)."""
    wanted, notes = targets(flows, voices)
    manifest = read_manifest(sounds)
    return plan(wanted, snapshot(sounds, wanted, manifest), manifest, prune=prune, notes=notes)


# --------------------------------------------------------------------------- speaking


def espeak_sox(*, espeak: str = "espeak-ng", sox: str = "sox") -> Synthesizer:
    """espeak-ng for each language's words, then sox to 8 kHz mono 16-bit, languages joined by a pause.

    The words go to espeak-ng on stdin, never on the command line (a text starting with ``-`` is no option)."""
    for program, package in ((espeak, "espeak-ng"), (sox, "sox")):
        if shutil.which(program) is None:
            raise SynthesisError(f"{program} not found: install it (Debian: apt-get install {package})")

    def run(args: Sequence[str], *, text: str | None = None) -> None:
        try:
            subprocess.run(args, input=text.encode() if text is not None else None, capture_output=True,
                           check=True, timeout=_STEP_TIMEOUT_S)
        except subprocess.CalledProcessError as exc:
            said = exc.stderr.decode(errors="replace").strip().splitlines()
            why = said[-1] if said else "no message"
            raise SynthesisError(f"{args[0]} failed (exit {exc.returncode}): {why}") from None
        except subprocess.TimeoutExpired:
            raise SynthesisError(f"{args[0]} took over {_STEP_TIMEOUT_S:.0f} s") from None
        except OSError as exc:
            raise SynthesisError(f"cannot run {args[0]}: {exc.strerror or exc}") from None

    phone = ["-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer"]

    def synthesize(target: Target, out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="cti-prompt-") as work:
            parts: list[str] = []
            for i, segment in enumerate(target.segments):
                spoken, narrow = f"{work}/{i}.wav", f"{work}/{i}-8k.wav"
                run([espeak, "-v", segment.voice, "-s", str(SPEED_WPM), "-b", "1", "--stdin", "-w", spoken],
                    text=segment.text)
                run([sox, spoken, *phone, narrow])  # each language alone: voices may differ in rate
                if parts:
                    pause = f"{work}/{i}-pause.wav"
                    run([sox, "-n", *phone, pause, "trim", "0", str(PAUSE_S)])
                    parts.append(pause)
                parts.append(narrow)
            run([sox, *parts, *phone, str(out), "gain", "-n", "-3"])

    return synthesize


# --------------------------------------------------------------------------- building


@dataclass(slots=True)
class BuildReport:
    plan: Plan
    made: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def build_prompts(flows: Iterable[Flow], sounds: Path, *, synthesize: Synthesizer,
                  voices: Mapping[str, str] | None = None, prune: bool = False) -> BuildReport:
    """Make every missing or changed prompt file, remove made files a recording supersedes (and, with
    ``prune``, those no flow plays), and keep the manifest up to date after each file. A file that fails is
    reported and the others go on."""
    the_plan = plan_for(flows, sounds, voices=voices, prune=prune)
    report = BuildReport(the_plan)
    entries = dict(the_plan.keep_entries)
    for action in the_plan.actions:
        if action.kind == "make":
            assert action.target is not None
            try:
                sha = _make(action, sounds, synthesize)
            except (SynthesisError, OSError) as exc:
                report.failed[action.file] = str(exc)
                continue
            entries[action.file] = ManifestEntry(action.target.digest, sha, action.target.uses)
            report.made.append(action.file)
        elif action.kind == "remove":
            try:
                (sounds / action.file).unlink(missing_ok=True)
            except OSError as exc:
                report.failed[action.file] = f"cannot remove: {exc.strerror or exc}"
                continue
            entries.pop(action.file, None)
            report.removed.append(action.file)
        else:
            continue
        _write_atomic(sounds / MANIFEST, render_manifest(entries).encode())
    if entries != read_manifest(sounds):  # nothing made or removed, but which prompts use a file changed
        _write_atomic(sounds / MANIFEST, render_manifest(entries).encode())
    return report


def _make(action: Action, sounds: Path, synthesize: Synthesizer) -> str:
    target = sounds / action.file
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".wav", dir=target.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        assert action.target is not None
        synthesize(action.target, tmp)
        data = tmp.read_bytes()
        if len(data) <= 44:  # a WAV header and no sound
            raise SynthesisError(f"{action.file}: the synthesizer made no sound")
        tmp.chmod(0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        Path(tmp_name).chmod(0o644)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- telling what happened


def describe(the_plan: Plan, report: BuildReport | None) -> tuple[list[str], int]:
    """Lines for ``cti prompts build`` (``report`` None: a dry run, the plan in the future tense) and the
    number of files that failed."""
    lines: list[str] = []
    done = report is not None
    failed = report.failed if report is not None else {}
    for action in the_plan.actions:
        uses = ", ".join(action.target.uses) if action.target is not None else ""
        if action.file in failed and action.kind in ("make", "remove"):
            lines.append(f"failed: {action.file} ({uses or action.why}): {failed[action.file]}")
        elif action.kind == "make":
            lines.append(f"{'made' if done else 'would make'} {action.file} ({action.why}; {uses})")
        elif action.kind == "keep":
            lines.append(f"up to date {action.file}")
        elif action.kind == "recorded":
            lines.append(f"recorded {action.file}: {', '.join(action.files)} plays")
        else:
            lines.append(f"{'removed' if done else 'would remove'} {action.file} ({action.why})")
    lines.extend(f"note: {note}" for note in the_plan.notes)
    counts = {kind: len(the_plan.of(kind)) for kind in ("make", "keep", "recorded", "remove")}
    made = counts["make"] - sum(1 for a in the_plan.of("make") if a.file in failed)
    lines.append(f"{'made' if done else 'to make'} {made}, up to date {counts['keep']}, recorded "
                 f"{counts['recorded']}, {'removed' if done else 'to remove'} {counts['remove']}"
                 + (f", failed {len(failed)}" if failed else ""))
    return lines, len(failed)

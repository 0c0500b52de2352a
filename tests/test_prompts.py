"""``cti prompts build``: which sound files the flows' text becomes and where (pure planning, with hypothesis),
that a recording is never overwritten and always wins, that a rebuild remakes only what changed, and (when
espeak-ng and sox are installed) that the files are 8 kHz mono 16-bit WAV as Asterisk plays them."""

from __future__ import annotations

import hashlib
import shutil
import wave
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cti.cli import main
from cti.prompts import SynthesisError, Synthesizer, build_prompts, espeak_sox, read_manifest
from ivr_flows import Flow, load_flow, parse_flow
from ivr_flows.prompts import (
    MANIFEST,
    ManifestEntry,
    Plan,
    Segment,
    Target,
    parse_manifest,
    plan,
    render_manifest,
    targets,
)

ROOT = Path(__file__).resolve().parents[1]
HOTLINE = load_flow(ROOT / "config" / "ivr" / "hotline.yaml")
HAVE_ESPEAK = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None
needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng and sox are not installed "
                                                          "(Debian: apt-get install espeak-ng sox)")


def flow(prompts: dict[str, object], *, languages: tuple[str, ...] = ("zh", "en"), id: str = "t") -> Flow:
    return parse_flow({"id": id, "languages": list(languages), "start": "bye", "prompts": prompts,
                       "nodes": {"bye": {"type": "hangup", "prompt": list(prompts)[:1]}}}, source="test")


def fake_synthesizer(made: list[str] | None = None) -> Synthesizer:
    """Writes a WAV of one sample per character of the words, so a change of words changes the bytes."""

    def synthesize(target: Target, out: Path) -> None:
        if made is not None:
            made.append(target.name)
        with wave.open(str(out), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(b"".join(s.text.encode() + s.voice.encode() for s in target.segments) * 4)

    return synthesize


# --- which files, from which words -------------------------------------------------------------


def test_the_hotline_becomes_one_file_per_language_and_one_bilingual_welcome() -> None:
    found, notes = targets([HOTLINE])
    assert not notes
    by_name = {t.name: t for t in found}
    assert len(found) == 2 + 2 * 9  # welcome and choose_language are shared; nine prompts per language
    welcome = by_name["hotline/welcome"]
    assert welcome.file == "hotline/welcome.wav" and welcome.languages == ("zh", "en")
    assert [(s.language, s.voice) for s in welcome.segments] == [("zh", "cmn"), ("en", "en-us")]
    assert welcome.segments[0].text == HOTLINE.prompts["welcome"].text["zh"]
    menu = by_name["hotline/en/main_menu"]
    assert menu.languages == ("en",) and menu.segments == (
        Segment("en", HOTLINE.prompts["main_menu"].text["en"], "en-us"),)
    assert by_name["hotline/zh/main_menu"].segments[0].voice == "cmn"
    # the file is exactly what the interpreter plays: STREAM FILE hotline/en/main_menu
    assert HOTLINE.prompts["main_menu"].file_for("en", "zh") == menu.name


def test_voices_are_chosen_per_language() -> None:
    found, _ = targets([HOTLINE], {"en": "en-gb"})
    assert {s.voice for t in found for s in t.segments if s.language == "en"} == {"en-gb"}
    assert {s.voice for t in found for s in t.segments if s.language == "zh"} == {"cmn"}


def test_missing_words_and_per_language_names() -> None:
    f = flow({"a": {"file": {"zh": "x/zh/a", "en": "x/en/a"}, "text": {"zh": "你好"}},
              "b": {"file": {"zh": "x/b"}, "text": {"zh": "再见", "en": "Bye"}}})
    found, notes = targets([f])
    assert [t.name for t in found] == ["x/zh/a", "x/b"]  # English b falls back to zh's file: made for zh only
    assert [t.languages for t in found] == [("zh",), ("zh",)]
    assert [(n.kind, n.name) for n in notes] == [("no_text", "x/en/a")]


def test_two_flows_sharing_a_sound_agree_or_the_first_wins() -> None:
    one = flow({"a": {"file": "shared/bye", "text": {"en": "Bye"}}}, languages=("en",), id="one")
    same = flow({"a": {"file": "shared/bye", "text": {"en": "Bye"}}}, languages=("en",), id="two")
    other = flow({"a": {"file": "shared/bye", "text": {"en": "Goodbye"}}}, languages=("en",), id="three")
    found, notes = targets([same, other, one])
    assert [(t.name, t.uses, t.segments[0].text) for t in found] == [("shared/bye", ("one:a", "two:a"), "Bye")]
    [conflict] = notes
    assert conflict.kind == "conflict" and "three:a" in conflict.message


def test_an_absolute_sound_name_is_left_alone() -> None:
    f = flow({"a": {"file": "/srv/sounds/a", "text": {"en": "A"}}}, languages=("en",))
    found, notes = targets([f])
    assert not found and [n.kind for n in notes] == ["absolute"]


# --- the plan against the disk -----------------------------------------------------------------

WELCOME = next(t for t in targets([HOTLINE])[0] if t.name == "hotline/welcome")
MENU_EN = next(t for t in targets([HOTLINE])[0] if t.name == "hotline/en/main_menu")


def ours(target: Target, sha: str = "s1") -> dict[str, ManifestEntry]:
    return {target.file: ManifestEntry(target.digest, sha, target.uses)}


def kinds(p: Plan) -> list[tuple[str, str]]:
    return [(a.kind, a.file) for a in p.actions]


def test_a_missing_file_is_made_and_an_up_to_date_one_kept() -> None:
    assert kinds(plan([MENU_EN], {}, {})) == [("make", "hotline/en/main_menu.wav")]
    kept = plan([MENU_EN], {"hotline/en/main_menu.wav": "s1"}, ours(MENU_EN))
    assert kinds(kept) == [("keep", "hotline/en/main_menu.wav")] and set(kept.keep_entries) == {MENU_EN.file}


def test_changed_words_remake_a_made_file() -> None:
    stale = {MENU_EN.file: ManifestEntry("older-digest", "s1")}
    [action] = plan([MENU_EN], {MENU_EN.file: "s1"}, stale).actions
    assert (action.kind, action.why) == ("make", "changed")


@pytest.mark.parametrize(("disk", "manifest"), [
    ({"hotline/en/main_menu.wav": "studio"}, {}),                           # a file we never made
    ({"hotline/en/main_menu.wav": "studio"}, "ours"),                        # a recording copied over ours
    ({"hotline/en/main_menu.gsm": None}, {}),                                # another format, same name
    ({"en/hotline/en/main_menu.ulaw": None}, {}),                            # Asterisk's language directory
])
def test_a_recording_is_never_overwritten(disk: dict[str, str | None], manifest: object) -> None:
    entries = ours(MENU_EN) if manifest == "ours" else {}
    p = plan([MENU_EN], disk, entries)
    assert [a.kind for a in p.actions] == ["recorded"] and not p.keep_entries


def test_a_recording_in_another_format_removes_the_made_wav() -> None:
    p = plan([MENU_EN], {"hotline/en/main_menu.wav": "s1", "hotline/en/main_menu.sln16": None}, ours(MENU_EN))
    assert kinds(p) == [("recorded", MENU_EN.file), ("remove", MENU_EN.file)]  # Asterisk might pick our wav
    assert p.of("remove")[0].why == "superseded by hotline/en/main_menu.sln16" and not p.keep_entries


def test_a_shared_recording_for_one_language_keeps_the_made_file_for_the_other() -> None:
    one = plan([WELCOME], {"hotline/welcome.wav": "s1", "zh/hotline/welcome.wav": None}, ours(WELCOME))
    assert kinds(one) == [("keep", "hotline/welcome.wav")]
    assert [n.kind for n in one.notes] == ["partly_recorded"]
    both = plan([WELCOME], {"zh/hotline/welcome.wav": None, "en/hotline/welcome.gsm": None}, {})
    assert [a.kind for a in both.actions] == ["recorded"]


def test_files_no_flow_plays_are_noted_or_pruned() -> None:
    gone = {"old/prompt.wav": ManifestEntry("d", "s9")}
    noted = plan([], {"old/prompt.wav": "s9"}, gone)
    assert not noted.actions and [n.kind for n in noted.notes] == ["orphan"] and set(noted.keep_entries) == {
        "old/prompt.wav"}
    assert kinds(plan([], {"old/prompt.wav": "s9"}, gone, prune=True)) == [("remove", "old/prompt.wav")]
    assert kinds(plan([], {"old/prompt.wav": "recorded"}, gone, prune=True)) == []  # no longer ours


PATHS = st.sampled_from([
    "hotline/welcome.wav", "hotline/welcome.gsm", "zh/hotline/welcome.wav", "en/hotline/welcome.sln16",
    "hotline/en/main_menu.wav", "hotline/en/main_menu.ulaw", "en/hotline/en/main_menu.wav", "old/prompt.wav",
    "hotline/en/main_menu_long.wav", "hotline/welcome",
])


@settings(max_examples=400, deadline=None)
@given(disk=st.dictionaries(PATHS, st.sampled_from([None, "s1", "s2"])),
       manifest=st.dictionaries(st.sampled_from(["hotline/welcome.wav", "hotline/en/main_menu.wav", "old/prompt.wav"]),
                                st.builds(ManifestEntry, st.sampled_from([WELCOME.digest, MENU_EN.digest, "x"]),
                                          st.sampled_from(["s1", "s2"]))),
       prune=st.booleans())
def test_the_plan_never_touches_what_it_did_not_make(disk: dict[str, str | None],
                                                     manifest: dict[str, ManifestEntry], prune: bool) -> None:
    p = plan([WELCOME, MENU_EN], disk, manifest, prune=prune)

    def is_ours(file: str) -> bool:
        return file in disk and file in manifest and disk[file] == manifest[file].sha256

    for action in p.actions:
        if action.kind in ("make", "remove"):
            assert action.file not in disk or is_ours(action.file), action  # a recording is never written or removed
    for target in (WELCOME, MENU_EN):
        verdicts = [a.kind for a in p.actions if a.target == target and a.kind != "remove"]
        assert len(verdicts) == 1
        exact = any(f.rpartition(".")[0] == target.name and f != target.file for f in disk) or (
            target.file in disk and not is_ours(target.file))
        every_language = all(any(f.rpartition(".")[0] == f"{lang}/{target.name}" for f in disk)
                             for lang in target.languages)
        assert (verdicts[0] == "recorded") == (exact or every_language)
        if verdicts[0] == "keep":
            assert is_ours(target.file) and manifest[target.file].digest == target.digest
    assert all(is_ours(file) for file in p.keep_entries)


def test_the_manifest_reads_back_and_a_broken_one_is_empty() -> None:
    entries = {"a/b.wav": ManifestEntry("d1", "s1", ("f:p",))}
    assert parse_manifest(render_manifest(entries)) == entries
    for broken in ("", "[", "[]", '{"files": 3}', '{"files": {"a.wav": {"digest": 1}}}', "[" * 100_000):
        assert parse_manifest(broken) == {}


# --- building on disk (any synthesizer) --------------------------------------------------------


def test_a_build_makes_the_files_and_a_rebuild_remakes_only_what_changed(tmp_path: Path) -> None:
    made: list[str] = []
    first = build_prompts([HOTLINE], tmp_path, synthesize=fake_synthesizer(made))
    assert len(first.made) == 20 and not first.failed
    assert (tmp_path / "hotline" / "zh" / "main_menu.wav").is_file()
    manifest = read_manifest(tmp_path)
    assert set(manifest) == set(first.made)
    sha = hashlib.sha256((tmp_path / "hotline/en/goodbye.wav").read_bytes()).hexdigest()
    assert manifest["hotline/en/goodbye.wav"].sha256 == sha
    assert not [p for p in tmp_path.rglob(".*") if p.name != MANIFEST]  # no temporary file left

    made.clear()
    again = build_prompts([HOTLINE], tmp_path, synthesize=fake_synthesizer(made))
    assert made == [] and len(again.plan.of("keep")) == 20

    studio = b"RIFF-a studio recording"
    (tmp_path / "hotline/en/goodbye.wav").write_bytes(studio)  # copied over the made one
    (tmp_path / "hotline/zh").joinpath("goodbye.gsm").write_bytes(b"gsm")  # another format beside the made wav
    data = yaml.safe_load((ROOT / "config" / "ivr" / "hotline.yaml").read_text(encoding="utf-8"))
    data["prompts"]["main_menu"]["text"]["en"] = "For billing, press 1."
    edited = parse_flow(data, source="edited", default_id="hotline")
    third = build_prompts([edited], tmp_path, synthesize=fake_synthesizer(made))
    assert made == ["hotline/en/main_menu"] and third.made == ["hotline/en/main_menu.wav"]
    assert (tmp_path / "hotline/en/goodbye.wav").read_bytes() == studio
    assert not (tmp_path / "hotline/zh/goodbye.wav").exists() and third.removed == ["hotline/zh/goodbye.wav"]
    manifest = read_manifest(tmp_path)
    assert "hotline/en/goodbye.wav" not in manifest and "hotline/zh/goodbye.wav" not in manifest
    old_menu = next(a.target for a in first.plan.actions if a.file == "hotline/en/main_menu.wav")
    assert old_menu is not None and manifest["hotline/en/main_menu.wav"].digest != old_menu.digest


def test_a_file_that_fails_is_reported_and_the_others_are_made(tmp_path: Path) -> None:
    good = fake_synthesizer()

    def flaky(target: Target, out: Path) -> None:
        if target.name == "hotline/en/main_menu":
            raise SynthesisError("espeak-ng failed (exit 1): no voice")
        good(target, out)

    report = build_prompts([HOTLINE], tmp_path, synthesize=flaky)
    assert list(report.failed) == ["hotline/en/main_menu.wav"] and len(report.made) == 19
    assert not (tmp_path / "hotline/en/main_menu.wav").exists() and "hotline/en/main_menu.wav" not in read_manifest(
        tmp_path)
    assert not [p for p in tmp_path.rglob(".*") if p.name != MANIFEST]


def test_the_command_plans_without_a_synthesizer(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["prompts", "build", "--flows", str(ROOT / "config" / "ivr"),
                                       "--sounds", str(tmp_path), "--dry-run", "--voice", "en=en-gb"])
    assert result.exit_code == 0, result.output
    assert "would make hotline/welcome.wav (missing; hotline:welcome)" in result.output
    assert result.output.strip().splitlines()[-1] == "to make 20, up to date 0, recorded 0, to remove 0"
    assert not list(tmp_path.iterdir())
    bad = CliRunner().invoke(main, ["prompts", "build", "--sounds", str(tmp_path), "--voice", "en"])
    assert bad.exit_code == 2 and "LANG=VOICE" in bad.output
    missing = CliRunner().invoke(main, ["prompts", "build", "--flows", str(ROOT / "config" / "ivr"),
                                        "--sounds", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no sounds directory" in missing.output


# --- the real synthesizer ------------------------------------------------------------------------


@needs_espeak
def test_espeak_ng_and_sox_make_8khz_mono_16bit_wav(tmp_path: Path) -> None:
    report = build_prompts([HOTLINE], tmp_path, synthesize=espeak_sox())
    assert len(report.made) == 20 and not report.failed
    seconds = {}
    for name in ("hotline/welcome", "hotline/zh/goodbye", "hotline/en/goodbye"):
        with wave.open(str(tmp_path / f"{name}.wav")) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getcomptype()) == (1, 2, 8000, "NONE")
            seconds[name] = w.getnframes() / 8000
            assert max(w.readframes(w.getnframes())) > 0  # not silence
    assert all(s > 0.5 for s in seconds.values())
    assert seconds["hotline/welcome"] > 2.0  # both languages, one after the other


@needs_espeak
def test_the_command_builds_with_espeak_ng(tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "demo.yaml").write_text("languages: [en]\nstart: bye\nprompts:\n  bye: {file: demo/bye, text: {en: "
                                     "'-v Goodbye.'}}\nnodes:\n  bye: {type: hangup, prompt: bye}\n", encoding="utf-8")
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    result = CliRunner().invoke(main, ["prompts", "build", "--flows", str(flows), "--sounds", str(sounds)])
    assert result.exit_code == 0, result.output
    assert (sounds / "demo" / "bye.wav").stat().st_size > 1000  # words starting with '-' are words, not options
    assert "made 1," in result.output

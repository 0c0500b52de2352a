"""AGI lines: rendering refuses anything that could become a second command; replies parse as Asterisk 22
sends them, including the recorded hangup in the middle of a session."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr_flows import (
    AgiCommand,
    Answer,
    Digits,
    Disconnect,
    Exec,
    GetData,
    Hangup,
    Play,
    SetVariable,
    Timeout,
    WaitForDigit,
    input_for,
    parse_env,
    parse_reply,
    render,
)
from ivr_flows.agi import MAX_LINE_BYTES, CommandRejected, ProtocolError, ReplyReader, UnsafeValueError

FIXTURES = Path(__file__).parent / "fixtures" / "agi"


def transcript(name: str) -> list[tuple[str, str]]:
    """(direction, text) pairs: '<' from Asterisk, '>' to it."""
    out = []
    for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        out.append((line[0], line[2:]))
    return out


def split_env(lines: list[tuple[str, str]]) -> tuple[list[str], list[tuple[str, str]]]:
    env = []
    for i, (direction, text) in enumerate(lines):
        assert direction == "<"
        env.append(text)
        if text == "":
            return env, lines[i + 1 :]
    raise AssertionError("no blank line after the environment")


# --- render -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "line"), [
    (Answer(), "ANSWER"),
    (Play("welcome", "12"), 'STREAM FILE welcome "12"'),
    (Play("hotline/zh/main_menu"), 'STREAM FILE hotline/zh/main_menu ""'),
    (GetData("prompt", 5000, 4), "GET DATA prompt 5000 4"),
    (WaitForDigit(4000), "WAIT FOR DIGIT 4000"),
    (WaitForDigit(-1), "WAIT FOR DIGIT -1"),
    (SetVariable("CTI_ENTRY", "billing"), 'SET VARIABLE CTI_ENTRY "billing"'),
    (SetVariable("CHANNEL(language)", "zh"), 'SET VARIABLE CHANNEL(language) "zh"'),
    (Exec("Playback", ("x",)), 'EXEC Playback "x"'),
    (Exec("VoiceMail", ("100@default", "s")), 'EXEC VoiceMail "100@default,s"'),
    (Exec("Answer"), "EXEC Answer"),
    (Disconnect(), "HANGUP"),
])
def test_render_lines(command: object, line: str) -> None:
    assert render(command) == line  # type: ignore[arg-type]


def test_render_matches_the_recorded_commands() -> None:
    sent = [text for direction, text in transcript("cti-main.txt") if direction == ">"]
    ours: list[AgiCommand | None] = [
        Answer(), WaitForDigit(4000), SetVariable("CTI_SKILL", "billing"), SetVariable("CTI_PRIORITY", "5"),
        None, Exec("Wait", ("1",)), WaitForDigit(1500),
    ]
    for command, recorded in zip(ours, sent, strict=True):
        if command is not None:  # GET VARIABLE: not a command the interpreter needs
            assert render(command) == recorded


def test_values_are_quoted_and_escaped() -> None:
    assert render(SetVariable("X", 'say "hi"')) == r'SET VARIABLE X "say \"hi\""'
    assert render(SetVariable("X", "back\\slash")) == r'SET VARIABLE X "back\\slash"'
    assert render(SetVariable("X", "two words")) == 'SET VARIABLE X "two words"'
    assert render(SetVariable("X", "")) == 'SET VARIABLE X ""'
    assert render(SetVariable("X", "李娜")) == 'SET VARIABLE X "李娜"'


def unquote(arg: str) -> str:
    """res_agi's parse_args for one quoted argument: backslash escapes the next character."""
    assert arg.startswith('"') and arg.endswith('"')
    out, escaped = [], False
    for c in arg[1:-1]:
        if escaped:
            out.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        else:
            assert c != '"', "an unescaped quote would end the argument early"
            out.append(c)
    assert not escaped
    return "".join(out)


@settings(deadline=None, max_examples=200)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_characters="\x7f"),
               max_size=60).filter(lambda s: not any(0x80 <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in s)))
def test_a_quoted_value_reads_back_as_itself(value: str) -> None:
    line = render(SetVariable("CTI_X", value))
    assert "\n" not in line and "\r" not in line
    assert unquote(line.removeprefix("SET VARIABLE CTI_X ")) == value


@pytest.mark.parametrize("evil", ["a\r\nHANGUP", "a\nEXEC System rm", "a\rb", "nul\x00", "tab\tx", "esc\x1b[",
                                  "del\x7f", "c1\x85", "ls\u2028x"])
def test_control_characters_are_refused_everywhere(evil: str) -> None:
    for command in (SetVariable("X", evil), SetVariable(evil, "v"), Play(evil), Play("f", evil),
                    GetData(evil, 1000, 1), Exec(evil), Exec("Playback", (evil,))):
        with pytest.raises(ValueError, match="AGI"):
            render(command)


@pytest.mark.parametrize("command", [
    Play("a b"), Play('a"b'), Play("../../etc/passwd"), Play("welcome", "12x"),
    SetVariable("A B", "v"), SetVariable("X;Y", "v"),
    Exec("Play back", ("x",)), Exec("Dial", ("PJSIP/1,60",)), GetData("p", 0, 1), GetData("p", 1000, 0),
    WaitForDigit(-2),
])
def test_names_outside_the_safe_alphabet_are_refused(command: object) -> None:
    with pytest.raises(UnsafeValueError):
        render(command)  # type: ignore[arg-type]


def test_a_line_asterisk_would_cut_in_two_is_refused() -> None:
    render(SetVariable("X", "a" * (MAX_LINE_BYTES - len('SET VARIABLE X ""'))))
    with pytest.raises(UnsafeValueError, match="bytes"):
        render(SetVariable("X", "a" * MAX_LINE_BYTES))
    with pytest.raises(UnsafeValueError, match="bytes"):
        render(SetVariable("X", "李" * 700))  # 2100 bytes in UTF-8, 700 characters


def test_render_refuses_what_is_not_an_agi_command() -> None:
    from ivr_flows import Lookup

    with pytest.raises(TypeError):
        render(Lookup("number", "1"))  # type: ignore[arg-type]


# --- replies ----------------------------------------------------------------------------------


def test_parse_reply_shapes() -> None:
    r = parse_reply("200 result=1 (timeout) endpos=1234\n")
    assert (r.code, r.result, r.data, dict(r.fields), r.value) == (200, "1", "timeout", {"endpos": "1234"}, 1)
    r = parse_reply("200 result=-1")
    assert (r.code, r.value, r.data) == (200, -1, None)
    r = parse_reply("200 result=0 endpos=8000")
    assert (r.value, dict(r.fields)) == (0, {"endpos": "8000"})
    r = parse_reply("200 result= (timeout)")
    assert (r.result, r.data, r.value) == ("", "timeout", None)
    r = parse_reply("200 result=1 (Hello (World) endpos=3)")  # a variable's value: parentheses and all
    assert r.data == "Hello (World) endpos=3" and not r.fields
    r = parse_reply("510 Invalid or unknown command")
    assert (r.code, r.message, r.continues) == (510, "Invalid or unknown command", False)
    r = parse_reply("511 Command Not Permitted on a dead channel or intercept routine")
    assert r.code == 511
    r = parse_reply("520 Invalid command syntax.  Proper usage not available.")
    assert (r.code, r.continues) == (520, False)
    r = parse_reply("520-Invalid command syntax.  Proper usage follows:")
    assert (r.code, r.continues) == (520, True)
    r = parse_reply("HANGUP\r\n")
    assert r.is_hangup_notice and r.code is None


@pytest.mark.parametrize("line", ["", "hello", "200 ok", "20 result=1", "200 result=1 (unclosed", "200 result=1 x"])
def test_parse_reply_refuses_what_is_not_a_reply(line: str) -> None:
    with pytest.raises(ProtocolError):
        parse_reply(line)


def test_reply_reader_folds_a_usage_text() -> None:
    reader = ReplyReader()
    assert reader.feed("520-Invalid command syntax.  Proper usage follows:") is None
    assert reader.feed(" Usage: GET DATA <file to be streamed> [timeout] [maxdigits]") is None
    reply = reader.feed("520 End of proper usage.")
    assert reply is not None and reply.code == 520 and "Usage: GET DATA" in reply.message
    assert reader.feed("200 result=0") == parse_reply("200 result=0")


def test_every_recorded_reply_parses() -> None:
    for name in ("cti-main.txt", "ctiedge-hangup-in-ivr.txt"):
        _env, session = split_env(transcript(name))
        for direction, text in session:
            if direction == "<":
                parse_reply(text)


def test_recorded_environment() -> None:
    env_lines, _ = split_env(transcript("cti-main.txt"))
    env = parse_env(env_lines)
    assert env["agi_callerid"] == "13800000301"
    assert env["agi_request"] == "agi://127.0.0.1:4573/main"
    assert env["agi_accountcode"] == ""
    with pytest.raises(ProtocolError):
        parse_env(["not an env line"])


def test_recorded_session_maps_to_inputs() -> None:
    """cti-main: the caller presses 2 during WAIT FOR DIGIT 4000 (result=50 is ASCII '2')."""
    _env, session = split_env(transcript("cti-main.txt"))
    replies = [parse_reply(text) for direction, text in session if direction == "<"]
    assert input_for(Answer(), replies[0]) is None
    assert input_for(WaitForDigit(4000), replies[1]) == Digits("2")
    assert input_for(SetVariable("CTI_SKILL", "billing"), replies[2]) is None
    assert input_for(WaitForDigit(1500), replies[-1]) == Timeout()


def test_recorded_hangup_is_a_notice_between_replies() -> None:
    """ctiedge 501: WAIT FOR DIGIT gets -1, then HANGUP arrives unasked; the dead channel keeps answering.

    Paired one line per command (as the recorder did), every reply after the notice lands on the wrong
    command: GET VARIABLE's value shows up as EXEC Wait's reply.  Skipping the notice pairs them right.
    """
    _env, session = split_env(transcript("ctiedge-hangup-in-ivr.txt"))
    commands = [text for direction, text in session if direction == ">"]
    lines = [text for direction, text in session if direction == "<"]
    replies = [parse_reply(line) for line in lines]
    notices = [i for i, r in enumerate(replies) if r.is_hangup_notice]
    assert notices == [2]
    assert input_for(WaitForDigit(4000), replies[1]) == Hangup()
    assert input_for(SetVariable("CTI_SKILL", "billing"), replies[2]) == Hangup()

    answers = [r for r in replies if not r.is_hangup_notice]
    paired = dict(zip(commands, answers, strict=False))  # the last command's reply was not recorded
    assert paired["GET VARIABLE CALLERID(num)"].data == "13800000501"
    assert paired['SET VARIABLE CTI_SKILL "billing"'].value == 1  # a dead channel still takes SET VARIABLE
    assert paired['EXEC Wait "1"'].value == 0


@pytest.mark.parametrize(("command", "line", "expected"), [
    (Play("f", "123"), "200 result=0 endpos=8000", None),
    (Play("f", "123"), "200 result=51 endpos=1200", Digits("3")),
    (Play("f", "123"), "200 result=-1 endpos=0", None),  # a missing file or a hangup: the next command tells
    (WaitForDigit(5000), "200 result=0", Timeout()),
    (WaitForDigit(5000), "200 result=35", Digits("#")),
    (WaitForDigit(5000), "200 result=-1", Hangup()),
    (GetData("p", 5000, 8), "200 result=12345678", Digits("12345678")),
    (GetData("p", 5000, 8), "200 result=1234 (timeout)", Digits("1234")),
    (GetData("p", 5000, 8), "200 result= (timeout)", Timeout()),
    (GetData("p", 5000, 8), "200 result=", Digits("")),
    (GetData("p", 5000, 8), "200 result=-1", Hangup()),
    (Answer(), "200 result=-1", Hangup()),
    (Exec("VoiceMail", ("1",)), "200 result=0", None),
    (SetVariable("X", "1"), "200 result=1", None),
    (Disconnect(), "200 result=1", None),
    (SetVariable("X", "1"), "HANGUP", Hangup()),
    (WaitForDigit(5000), "511 Command Not Permitted on a dead channel or intercept routine", Hangup()),
])
def test_input_for(command: object, line: str, expected: object) -> None:
    assert input_for(command, parse_reply(line)) == expected  # type: ignore[arg-type]


def test_input_for_an_unknown_command_reply_raises() -> None:
    with pytest.raises(CommandRejected) as info:
        input_for(Answer(), parse_reply("510 Invalid or unknown command"))
    assert info.value.reply.code == 510

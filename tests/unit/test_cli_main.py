"""The console script's own error handling: one line on stderr and click's exit codes."""

from __future__ import annotations

import pytest

from ledger.cli import USAGE_ERROR_EXIT, main


def run_main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr("sys.argv", ["ledger", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    code = exit_info.value.code
    assert isinstance(code, int)
    return code


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nosuch"], "ledger: No such command 'nosuch'. (see 'ledger --help')"),
        (["up", "--bogus"], "ledger up: No such option: --bogus (see 'ledger up --help')"),
        (["sagas", "show"], "ledger sagas show: Missing argument 'saga_id'."),
        (["up", "--port", "0"], "ledger up: Invalid value for '--port'"),
        (["sagas", "retry", "a/b"], "'a/b' is not a saga id"),
    ],
)  # fmt: skip
def test_a_usage_error_is_one_line_on_stderr_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    code = run_main(monkeypatch, *args)

    captured = capsys.readouterr()
    assert code == USAGE_ERROR_EXIT
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert says in captured.err


def test_help_exits_0_and_prints_the_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_main(monkeypatch, "--help")

    assert code == 0
    assert "projections" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["up"], ["serve", "account"], ["token", "create", "--sub",
                                     "ops", "--scope", "admin"]])  # fmt: skip
def test_a_bad_setting_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    monkeypatch.setenv("LEDGER_HTTP_PORT", "eighty")

    code = run_main(monkeypatch, *command)

    captured = capsys.readouterr()
    assert code == USAGE_ERROR_EXIT
    assert captured.err.strip().splitlines() == [
        "error: bad setting LEDGER_HTTP_PORT: Input should be a valid integer, unable to parse"
        " string as an integer"
    ]

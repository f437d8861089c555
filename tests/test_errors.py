"""Only our own user-error types become one line; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import pytest

from defectseg.data.readers import DataError
from defectseg.models.encoder_io import EncoderMismatchError
from defectseg.utils.errors import (
    ConfigError,
    FolderInUseError,
    MissingFileError,
    UserError,
    exit_cleanly_on_user_error,
)


@pytest.mark.parametrize(
    "error",
    [
        UserError("u"),
        ConfigError("optim.lr: bad"),
        MissingFileError("x"),
        FolderInUseError("f"),
        DataError("d"),
        EncoderMismatchError("e"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(error, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @exit_cleanly_on_user_error
    def main():
        raise error

    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"error: {error}\n"


@pytest.mark.parametrize("error", [ValueError("internal"), FileNotFoundError("internal"), KeyError("kind")])
def test_other_errors_keep_their_traceback(error, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @exit_cleanly_on_user_error
    def main():
        raise error

    with pytest.raises(type(error)):
        main()

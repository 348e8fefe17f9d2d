"""The project's warnings on the command line: one line each, the command named, no
Python source line; other libraries' warnings as Python shows them."""

import warnings

from napari_samscope.cli.main import one_line_warnings
from napari_samscope.core.predict.resolution import SmallObjectWarning


def test_our_warnings_are_one_line_and_others_are_left_alone(capsys):
    elsewhere = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, *args, **kwargs: elsewhere.append(category)
        with one_line_warnings("samscope annotate"):
            warnings.warn("2 boxes cover fewer than 16\n   model-input pixels", SmallObjectWarning, stacklevel=1)
            warnings.warn("something else", DeprecationWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "samscope annotate: warning: 2 boxes cover fewer than 16 model-input pixels"]
    assert elsewhere == [DeprecationWarning]  # shown as before the command


def test_the_display_is_restored_after_the_command():
    before = warnings.showwarning
    with one_line_warnings("samscope predict"):
        assert warnings.showwarning is not before
    assert warnings.showwarning is before

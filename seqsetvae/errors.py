"""Errors about the user's input: the console script prints them without a traceback."""

from __future__ import annotations


class InputError(Exception):
    """Bad input data or configuration.

    The message must let the user fix the problem: name the file, the row number(s) or
    patient id(s), and the column involved.
    """

"""Errors about the user's input: the console script prints them without a traceback."""

from __future__ import annotations


class InputError(Exception):
    """Bad input data or configuration.

    The message must let the user fix the problem: name the file, the row number(s) or
    patient id(s), and the column involved.
    """


class DamagedFile(InputError):
    """A file a stage wrote earlier that cannot be read back whole (truncated by an
    interrupted copy, emptied, overwritten): names it, the rule that writes it and how to
    rebuild it."""

    def __init__(self, path, reason: str, written_by: str | None) -> None:
        rebuild = (
            f"; it is written by the `{written_by}` rule: rebuild it with `snakemake --forcerun {written_by} <your target>`"
            if written_by
            else ""
        )
        super().__init__(f"{path}: damaged or unreadable file ({reason}){rebuild}")

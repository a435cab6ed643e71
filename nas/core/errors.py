"""User-facing errors: entry points print them as one line and exit with code 2."""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from typing import Iterator, NoReturn


class UserError(ValueError):
    """Bad input from the user (config, genotype, paths); the message says what is wrong and how to fix it."""


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a UserError into `error: <message>` on stderr and exit code 2, with no traceback."""
    try:
        yield
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line UserErrors (exit code 2, no usage dump)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see {self.prog} --help")

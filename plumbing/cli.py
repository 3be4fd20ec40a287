"""Command-line plumbing shared by the entry points: argparse built from a dataclass, so that
`--help` documents every knob and each flag is checked where it is declared, and errors shown
as one line without a traceback.

One convention for "not given": a flag whose default is None is filled later from a table of
defaults (by method, scale or device); its help says what it becomes.
"""
import argparse
import dataclasses
import os
import sys
import typing


def flag(default, help, *, choices=None, at_least=None, above=None, at_most=None):
    """A dataclass field that becomes one command-line flag. at_least / above / at_most: the bounds
    every given value (each item, for a list) must respect; checked by `parse_config`."""
    metadata = {"help": help, "choices": choices, "at_least": at_least, "above": above, "at_most": at_most}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """argparse's own errors (unknown flag, bad choice) as one line too."""
        sys.exit(f"error: {message} (see --help)")


def base_type(kind):
    """Optional[X] -> X; list[X] -> (X, True)."""
    if typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is list:
        return typing.get_args(kind)[0], True
    return kind, False


def check_bounds(cfg):
    """Every flag's bound, from its declaration: the one place flags are range-checked."""
    for field in dataclasses.fields(cfg):
        value, meta = getattr(cfg, field.name), field.metadata
        values = value if isinstance(value, list) else [value]
        name = "--" + field.name.replace("_", "-")
        for v in values:
            if v is None:
                continue
            if meta.get("at_least") is not None and v < meta["at_least"]:
                raise ValueError(f"{name} must be at least {meta['at_least']}, got {v}")
            if meta.get("above") is not None and v <= meta["above"]:
                raise ValueError(f"{name} must be above {meta['above']}, got {v}")
            if meta.get("at_most") is not None and v > meta["at_most"]:
                raise ValueError(f"{name} must be at most {meta['at_most']}, got {v}")
    return cfg


def parse_config(cls, description, argv=None):
    """Build an ArgumentParser from dataclass `cls`: one flag per field, with its help, default,
    choices and bounds from the field's `flag(...)` declaration."""
    parser = Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        name = "--" + field.name.replace("_", "-")
        kind, many = base_type(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        help_text = field.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(name, type=kind, nargs="+" if many else None, default=default,
                                choices=field.metadata.get("choices"), help=help_text)
    return check_bounds(cls(**vars(parser.parse_args(argv))))


def run_command(main):
    """Run an entry point. A ValueError (what the library raises for anything a user can get
    wrong), a missing file, a folder that cannot be written or Ctrl-C ends with one line and exit
    code 1. TRACEBACK=1 in the environment shows the whole traceback instead, for debugging."""
    if os.environ.get("TRACEBACK"):
        return main()
    try:
        main()
    except ValueError as e:
        sys.exit(f"error: {e}")
    except FileNotFoundError as e:
        sys.exit(f"error: file not found: {e.filename or e}")
    except OSError as e:  # a folder that cannot be written, a full disk: what and where
        sys.exit(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "))
    except KeyboardInterrupt:
        sys.exit("interrupted (checkpoints already written are intact)")

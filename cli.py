"""Command-line plumbing shared by the scripts: argparse built from a dataclass, so that
`--help` documents every knob, and user mistakes reported as one line without a traceback."""
import argparse
import dataclasses
import sys
import typing


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing file, ...): printed as one line."""


def parse_config(cls, description, argv=None):
    """Build an ArgumentParser from dataclass `cls`: one flag per field, its help taken from
    the field's `metadata={"help": ...}`, its default from the field's default."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(kind) is list:
            item = typing.get_args(kind)[0]
            parser.add_argument(flag, type=item, nargs="+", default=default, help=help_text)
        else:
            if typing.get_origin(kind) is typing.Union:  # Optional[X]
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            choices = field.metadata.get("choices")
            parser.add_argument(flag, type=kind, default=default, choices=choices, help=help_text)
    return cls(**vars(parser.parse_args(argv)))


def run(main):
    """Run main(); a UserError, a missing file or Ctrl-C ends with one line and exit code 2."""
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
    except FileNotFoundError as e:
        sys.exit(f"error: file not found: {e.filename or e}")
    except KeyboardInterrupt:
        sys.exit("interrupted (checkpoints already written are intact)")

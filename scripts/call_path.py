"""The call path of a command through the project's own files: every project function its main
enters, in order of first entry, indented by call depth, and the number of distinct calls that cross
from one file to another (a reader's jumps between files).

    python scripts/call_path.py --depth 3 -- train.py --distill sdtt --data synthetic --size micro \
        --seq-len 16 --batch-size 4 --iters 2 --eval-samples 4 --teacher out/m/ckpt.pt --out-dir /tmp/s

Everything after `--` is the command (a script of the project and its flags); it runs as it would
from the command line. Functions of the standard library and of installed packages are not shown.
"""
import argparse
import functools
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def project_file(filename):
    """The path of a file of the project, relative to its root, or None (the standard library, installed
    packages, frozen modules, this script)."""
    path = Path(filename)
    if not path.is_absolute() or path.suffix != ".py":
        return None
    path = path.resolve()
    if ROOT not in path.parents or ".venv" in path.parts or path.name == Path(__file__).name:
        return None
    return str(path.relative_to(ROOT))


def trace(script, argv, depth, root="main"):
    """Run the script under a profiler. Returns ([(depth, file:function)] in order of first entry, the
    set of (caller, callee) pairs of file:function whose files differ), both counted from the first
    call of the script's function `root` on (the imports before it left out), depth from it."""
    entered, crossings, stack = {}, set(), []
    start = f"{script}:{root}"

    def profile(frame, event, arg):
        if event == "call":
            where = project_file(frame.f_code.co_filename)
            name = where and f"{where}:{frame.f_code.co_qualname}"
            if where is not None and (start in stack or name == start):
                inside = [s for s in stack[stack.index(start) if start in stack else len(stack):] if s is not None]
                if inside and inside[-1].split(":")[0] != where:
                    crossings.add((inside[-1], name))
                if name not in entered and len(inside) < depth:
                    entered[name] = len(inside)
            stack.append(name)
        elif event == "return" and stack:
            stack.pop()
    sys.argv = [script, *argv]
    sys.path.insert(0, str(ROOT))
    sys.setprofile(profile)
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit:
        pass
    finally:
        sys.setprofile(None)
    return [(d, name) for name, d in entered.items()], crossings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=3, help="show functions down to this call depth")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- script.py and its flags")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --, e.g. -- train.py --distill sdtt")
    path, crossings = trace(command[0], command[1:], args.depth)
    print("\n".join("  " * d + name for d, name in path))
    files = {name.split(":")[0] for pair in crossings for name in pair}
    print(f"\n{len(crossings)} distinct calls between files, {len(files)} files")


if __name__ == "__main__":
    main()

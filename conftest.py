# Empty on purpose: its presence makes pytest put the repository root on sys.path.

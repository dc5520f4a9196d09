"""The ``drl <stage>`` commands: each function takes params.yaml and the parsed arguments, reads its
inputs, calls the library (the maths, in modules named after it) and writes its outputs atomically.
drl/cli.py only parses arguments and dispatches here; drl/code_deps.py derives each stage's code
dependencies from these functions' imports."""

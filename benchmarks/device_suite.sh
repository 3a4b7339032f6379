#!/bin/sh
# The accelerator suite in one call (see benchmarks/device_suite.py --help); extra arguments pass through.
exec "${PYTHON:-python}" "$(dirname "$0")/device_suite.py" "$@"

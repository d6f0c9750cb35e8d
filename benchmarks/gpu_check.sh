#!/usr/bin/env bash
# The GPU check lives in gpu_check.py (standard library only, so it runs before anything is installed);
# this wrapper keeps `bash benchmarks/gpu_check.sh ...` working. Options: python3 benchmarks/gpu_check.py -h
exec "${PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/gpu_check.py" "$@"

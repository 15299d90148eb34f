#!/usr/bin/env bash
# Gathers, here where PyPI answers, what `bash benchmarks/gpu.sh official` needs on a lent GPU machine (which
# reaches nothing outside itself). Both folders are git-ignored: name them in the device tool's `carry`.
#   .official/i2vgen-xl  the official code, TIGER-AI-Lab/AnyV2V @ bc540be, the i2vgen-xl/ modules only (from the
#                        checkout ANYV2V_REPO names, else a fresh clone)
#   .whl-official/       its pinned libraries as wheels for the machine's Python 3.12 (8 MB of transformers
#                        and 2 MB of diffusers among them, 14 MB in all; the working tree travels in 64 MiB):
#                        diffusers 0.26.3 (environment.yml's pin), transformers 4.38.2 and tokenizers 0.15.2
#                        (its release then), huggingface_hub 0.20.3 (diffusers 0.26 imports cached_download,
#                        gone from 0.26 on), importlib_metadata. torch, numpy and the rest: the machine's own.
# The same libraries run the CPU smoke (`gpu.sh --smoke official`) from /tmp/official-site-cpu, built here.
set -euo pipefail
cd "$(dirname "$0")/.."
COMMIT=bc540be
if [[ ! -d .official/i2vgen-xl ]]; then
    repo="${ANYV2V_REPO:-}"
    if [[ -z "$repo" ]]; then
        repo=$(mktemp -d)
        git clone -q https://github.com/TIGER-AI-Lab/AnyV2V "$repo"
    fi
    mkdir -p .official
    # the code this path imports, not the notebook and configs (the tree travels in 64 MiB)
    git -C "$repo" archive "$COMMIT" i2vgen-xl/__init__.py i2vgen-xl/pipelines i2vgen-xl/pnp_utils.py \
        i2vgen-xl/utils.py | tar -x -C .official
fi
PINS=(diffusers==0.26.3 transformers==4.38.2 tokenizers==0.15.2 huggingface_hub==0.20.3 importlib_metadata==7.0.1)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl-official "${PINS[@]}"
# for the CPU smoke here: the same pins for this machine's Python
python3 -m pip download -q --no-deps --only-binary=:all: -d /tmp/official-wheels-cpu "${PINS[@]}"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/official-site-cpu \
    /tmp/official-wheels-cpu/*.whl
du -sh .official .whl-official

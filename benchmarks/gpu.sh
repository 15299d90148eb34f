#!/usr/bin/env bash
# Every GPU benchmark of the issues in one command. Full-size architectures, random weights (speed does
# not depend on the values), each backbone at its official defaults. Each part's tables go to stdout and to
# $GPU_OUT/<part>.md (default benchmarks/out; on a lent device machine set GPU_OUT=$OUT so they come back),
# each part under a time budget of PART_BUDGET_S seconds (default 540: a part stopped there keeps what it
# printed, and the next part runs).
#   bash benchmarks/gpu.sh
# One part only (a part runs in well under 10 minutes on an H100, all together longer):
#   bash benchmarks/gpu.sh profile        # where one UNet call's time goes (torch.profiler), per backbone
#   bash benchmarks/gpu.sh official       # the official AnyV2V I2VGen-XL code beside ours (prepare_official.sh)
#   bash benchmarks/gpu.sh backbones      # I2VGen-XL, ConsistI2V, SEINE: float16, one clip per call
#   bash benchmarks/gpu.sh i2vgen-xl      # I2VGen-XL: float16 and bfloat16, 1-4 clips per call
#   bash benchmarks/gpu.sh compile        # I2VGen-XL with torch.compile
#   bash benchmarks/gpu.sh wan            # Wan2.2-TI2V-5B: 1280x704 x 121 and 832x480 x 81, bfloat16
# The tokenizers, scheduler configs and manifests come from the shared recordings (../shared/fixtures). A lent
# GPU machine gets only the repository: copy them without weights into .shared/ (git-ignored) and name it
# in the device tool's `carry`:
#   rsync -a --exclude '*.safetensors' --exclude '*.bin' --exclude '*.pt' ../shared/fixtures/ .shared/fixtures/
# The same commands on the CPU, shrunk (64x64, 10 inversion / 5 sampling steps, one clip, bfloat16, no compile;
# the profile on the tiny fixture models): checks the code path end to end, measures nothing. THREADS
# (default 1) sets the CPU threads.
#   bash benchmarks/gpu.sh --smoke [part ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

SMOKE=()
if [[ "${1:-}" == "--smoke" ]]; then
    shift
    # later flags win: these override the GPU settings below. bfloat16 stands in for float16: on a CPU
    # float16 convolutions fall back to kernels ~10x slower, and the path is the same (half-precision UNet
    # and text encoder, float32 VAE)
    SMOKE=(--smoke --device cpu --threads "${THREADS:-1}" --inversion-steps 10 --steps 5 --batches 1
        --dtypes bfloat16)
fi
PARTS=("$@")
if [[ ${#PARTS[@]} -eq 0 ]]; then
    PARTS=(profile official backbones i2vgen-xl compile wan)
fi
GPU_OUT="${GPU_OUT:-benchmarks/out}"
mkdir -p "$GPU_OUT"
BUDGET="${PART_BUDGET_S:-540}"
bench() { timeout "$BUDGET" python benchmarks/bench_engine.py "$@" "${SMOKE[@]}" || echo "(stopped: exit $?)"; }

run_part() {
    local part="$1"
    case "$part" in
    profile)
        # one inversion call and one injecting sampling call of each U-Net, by kind of work: attention
        # (spatial, temporal, cross), convolutions, norms, linear, elementwise; launch gaps; FLOP rate; the
        # SDPA backend used
        if [[ ${#SMOKE[@]} -eq 0 ]]; then
            timeout "$BUDGET" python benchmarks/profile_unet.py --full-size --device cuda --dtype float16 \
                --backbone all --json "$GPU_OUT/profile.json" || echo "(stopped: exit $?)"
        else
            timeout "$BUDGET" python benchmarks/profile_unet.py --backbone all --threads "${THREADS:-1}" \
                || echo "(stopped: exit $?)"
        fi
        ;;
    official)
        # the official AnyV2V I2VGen-XL code (in its own pinned libraries: benchmarks/prepare_official.sh, whose
        # .official and .whl-official travel in `carry`) and ours, one clip each, official defaults, float16,
        # on this card; then ours / official per clip and for sampling from a stored inversion
        if [[ ${#SMOKE[@]} -eq 0 ]]; then
            python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/official-site \
                .whl-official/*.whl
            ANYV2V_OFFICIAL=.official/i2vgen-xl PYTHONPATH=/tmp/official-site timeout "$BUDGET" \
                python benchmarks/bench_official_i2vgen_xl.py --device cuda --json "$GPU_OUT/official.json" \
                || echo "(stopped: exit $?)"
            timeout "$BUDGET" python benchmarks/bench_engine.py --full-size --device cuda --backbone i2vgen-xl \
                --inversion-steps 500 --dtypes float16 --batches 1 --json "$GPU_OUT/ours.json" || echo "(stopped: exit $?)"
        else  # the tiny fixture model on both sides, 10 inversion / 5 sampling steps, float32
            ANYV2V_OFFICIAL=.official/i2vgen-xl PYTHONPATH=/tmp/official-site-cpu timeout "$BUDGET" \
                python benchmarks/bench_official_i2vgen_xl.py --smoke --threads "${THREADS:-1}" --json "$GPU_OUT/official.json" \
                || echo "(stopped: exit $?)"
            timeout "$BUDGET" python benchmarks/bench_engine.py --backbone i2vgen-xl --inversion-steps 10 --steps 5 \
                --batches 1 --threads "${THREADS:-1}" --json "$GPU_OUT/ours.json" || echo "(stopped: exit $?)"
        fi
        python - "$GPU_OUT/official.json" "$GPU_OUT/ours.json" <<'PY' || echo "(no ratio: a side did not finish)"
import json, sys
official, ours = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))[0]
print("| figure | official s | ours s | official / ours (> 1: ours faster) |\n|---|---|---|---|")
for label, key in (("whole edit, one clip", "whole_s"), ("sampling from a stored inversion", "sampling_s"),
                   ("inversion", "inversion_s")):
    print(f"| {label} | {official[key]:.2f} | {ours[key]:.2f} | {official[key] / ours[key]:.2f}x |")
PY
        ;;
    backbones)
        # each backbone at its official defaults (I2VGen-XL 512x512x16, ConsistI2V 256x256x16, SEINE
        # 512x512x16; 500 inversion steps, 50 sampling steps), float16: seconds per step and per UNet call,
        # the whole edit, peak memory
        bench --full-size --device cuda --backbone all --inversion-steps 500 --dtypes float16 --batches 1
        ;;
    i2vgen-xl)
        # I2VGen-XL, official defaults, both half precisions, 1-4 clips per UNet call
        bench --full-size --device cuda --backbone i2vgen-xl --inversion-steps 500 \
            --dtypes float16 bfloat16 --batches 1 2 3 4 --compile no
        ;;
    compile)
        # torch.compile, float16, one and two clips per call (compiling a full-size UNet on a CPU takes
        # far too long: skipped by --smoke)
        if [[ ${#SMOKE[@]} -eq 0 ]]; then
            bench --full-size --device cuda --backbone i2vgen-xl --inversion-steps 500 \
                --dtypes float16 --batches 1 2 --compile yes
        fi
        ;;
    wan)
        # Wan2.2-TI2V-5B at its official defaults (50 Euler inversion steps on the sampling grid, 50 UniPC
        # sampling steps, guidance 5 with two branches, the source branch while injecting), bfloat16:
        # 720p x 121 frames, then 480p x 81. (The smoke builds the 5 B transformer and umT5-XXL on the
        # CPU: about 21 GB in bfloat16, so it is left out of --smoke.)
        if [[ ${#SMOKE[@]} -eq 0 ]]; then
            bench --full-size --device cuda --backbone wan2.2-ti2v --inversion-steps 50 --steps 50 \
                --dtypes bfloat16 --batches 1
            bench --full-size --device cuda --backbone wan2.2-ti2v --inversion-steps 50 --steps 50 \
                --dtypes bfloat16 --batches 1 --frames 81 --size 832 --height 480
        fi
        ;;
    esac  # unknown parts are refused before any part runs (below)
}

for part in "${PARTS[@]}"; do
    case "$part" in
    profile | official | backbones | i2vgen-xl | compile | wan) ;;
    *)
        echo "unknown part '$part' (profile, official, backbones, i2vgen-xl, compile, wan)" >&2
        exit 2
        ;;
    esac
done
for part in "${PARTS[@]}"; do
    echo "## $part ($(date -u +%FT%TZ))"
    run_part "$part" 2>&1 | tee "$GPU_OUT/$part.md"
done

#!/usr/bin/env bash
# Every GPU benchmark of the issues in one command; the tables go to stdout. Full-size architectures,
# random weights (speed does not depend on the values), each backbone at its official defaults.
#   mkdir -p benchmarks/out && bash benchmarks/gpu.sh | tee benchmarks/out/gpu-$(date +%F).md
# One part only (each is one table; a part runs in well under 10 minutes on an H100, all together longer):
#   bash benchmarks/gpu.sh backbones      # I2VGen-XL, ConsistI2V, SEINE: float16, one clip per call
#   bash benchmarks/gpu.sh i2vgen-xl      # I2VGen-XL: float16 and bfloat16, 1-4 clips per call
#   bash benchmarks/gpu.sh compile        # I2VGen-XL with torch.compile
#   bash benchmarks/gpu.sh wan            # Wan2.2-TI2V-5B: 1280x704 x 121 and 832x480 x 81, bfloat16
# The tokenizers, scheduler configs and manifests come from the shared recordings (../shared/fixtures). A lent
# GPU machine gets only the repository: copy them without weights into .shared/ (git-ignored) and name it
# in the device tool's `carry`:
#   rsync -a --exclude '*.safetensors' --exclude '*.bin' --exclude '*.pt' ../shared/fixtures/ .shared/fixtures/
# The same commands on the CPU, shrunk (64x64, 10 inversion / 5 sampling steps, one clip, bfloat16, no compile):
# checks the code path end to end, measures nothing. THREADS (default 1) sets the CPU threads.
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
    PARTS=(backbones i2vgen-xl compile wan)
fi
bench() { python benchmarks/bench_engine.py "$@" "${SMOKE[@]}"; }

for part in "${PARTS[@]}"; do
    case "$part" in
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
    *)
        echo "unknown part '$part' (backbones, i2vgen-xl, compile, wan)" >&2
        exit 2
        ;;
    esac
done

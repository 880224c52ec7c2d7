#!/usr/bin/env bash
# fastheads bench on an NVIDIA GPU machine, results written like the CPU ones (bench/results/).
#
# Installs nothing from the network. If the machine lacks a package, carry wheels in .whl/
# (see the device README); they are installed into /tmp/site, never into the system.
# Without a GPU it runs the CPU quick bench instead, so the script can be tested anywhere.
# Budget: under 5 minutes on one recent GPU (the IDG reference pipeline is CPU-bound).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
OUT="${OUT_DIR:-bench/results}"
ngpu=$(python3 -c "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))" 2>/dev/null || echo 0)
if [ "$ngpu" -eq 0 ]; then
    echo "gpu.sh: no GPU visible; running the CPU quick bench instead"
    exec python3 -m fastheads bench --quick --out "$OUT"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# fp32, bf16 and fp16 of the frozen base; the notebook's 13 epochs and question 1's five runs.
python3 -m fastheads bench --precision fp32 --precision bf16 --precision fp16 --out "$OUT" ${DATA:+--data "$DATA"} ${CLASSES:+--classes "$CLASSES"}
if [ "$ngpu" -gt 1 ] && [ -x bench/multi_gpu_check.sh ]; then
    bench/multi_gpu_check.sh
fi

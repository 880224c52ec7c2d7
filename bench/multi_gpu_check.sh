#!/usr/bin/env bash
# Multi-device check: a feature store built with --strategy mirrored over every local GPU must
# equal the one built on a single GPU (same key, same rows). Prints OK or FAIL and the largest
# difference; exits 0 with a message on a machine with at most one GPU. Installs nothing.
# Budget: about a minute (random weights, 224x224, 64 images x 3 views, fp32, XLA off).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY="${PYTHON:-python3}"
ngpu=$("$PY" -c "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))" 2>/dev/null || echo 0)
if [ "$ngpu" -le 1 ]; then
    echo "multi_gpu_check.sh: $ngpu GPU(s) visible; the multi-device check needs at least two, skipped."
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" - "$work" <<'PY'
import sys
import h5py
import numpy as np
from fastheads.demo import make_demo_images

images, labels = make_demo_images(per_class=8, size=224, seed=3)
with h5py.File(f"{sys.argv[1]}/data.h5", "w") as f:
    f["images"] = images[:64].astype(np.float32)
    f["labels"] = labels[:64]
PY
for s in default mirrored; do
    start=$SECONDS
    "$PY" -m fastheads cache build --data "$work/data.h5" --weights none --views 2 --precision fp32 --xla off \
        --strategy "$s" --cache-dir "$work/cache_$s" --quiet
    echo "$s build: $((SECONDS - start)) s"
done
"$PY" - "$work" "$ngpu" <<'PY'
import sys
import numpy as np
import zarr
from fastheads.feature_store import list_entries

work, ngpu = sys.argv[1], sys.argv[2]
(a,), (b,) = list_entries(f"{work}/cache_default"), list_entries(f"{work}/cache_mirrored")
fa = zarr.open_array(str(a / "features"), mode="r")[...].astype(np.float32)
fb = zarr.open_array(str(b / "features"), mode="r")[...].astype(np.float32)
diff = float(np.abs(fa - fb).max())
scale = float(np.abs(fa).max())
same = a.name == b.name and fa.shape == fb.shape
if same and diff == 0.0:
    print(f"OK: mirrored over {ngpu} GPUs is bit-identical to one GPU ({fa.shape[0]} images x {fa.shape[1]} views)")
elif same and diff <= 1e-3 * max(scale, 1.0):
    print(f"OK (not bit-identical): max |difference| {diff:.3g}, features up to {scale:.3g} (float16 store)")
else:
    print(f"FAIL: keys {a.name} / {b.name}, max |difference| {diff:.3g}, features up to {scale:.3g}")
    sys.exit(1)
PY

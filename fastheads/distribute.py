"""Beyond one device: which tf.distribute strategy, and the frozen base run across its replicas.

`--strategy` names one of:

- `default`: one device (the first GPU, else the CPU): the plain frozen function, unchanged;
- `mirrored`: MirroredStrategy over every local GPU (or, without GPUs, over several logical
  CPU devices, which is how the tests exercise it);
- `multiworker`: MultiWorkerMirroredStrategy across machines described by TF_CONFIG; every
  worker runs the same command and each computes its part of every global batch;
- `tpu`: TPUStrategy through TPUClusterResolver (Colab's TPU runtime, or TPU_NAME);
- `auto`: a TPU when COLAB_TPU_ADDR or TPU_NAME is set (or /dev/accel* exists) and its
  resolver works, else
  multiworker when TF_CONFIG is set, else mirrored with more than one GPU, else default.

Numbers. A global batch is split into contiguous, equal pieces, one per replica (padded
with zero images that are dropped afterwards); each replica runs the same frozen function
on its piece, and the pieces are gathered back in input order. Every image's features
depend only on that image, so they are mathematically those of a single-device run. Bits
may differ where a device's kernels depend on the batch size (cuDNN and oneDNN choose
algorithms per shape), on different device models, and on a TPU (which computes in bf16
internally). tests/test_scale.py measures mirrored vs default on two logical CPUs.

The feature-store key leaves the strategy out, deliberately: it does not change what is
computed, only where, and the same is true of things the key already ignores (which GPU
model, the batch size halved after an out-of-memory error). Putting it in would make a
cache built on 8 GPUs useless to the laptop that trains from it, which is the point of a
shared store. Precision and XLA, which do change the numbers on purpose, are in the key.

Head training (train.py) builds and compiles the head inside `strategy.scope()`: Keras then
splits each training batch across replicas and all-reduces the gradients, which equals
the single-device step up to float summation order.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable

from fastheads.errors import UserError

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")


def check_strategy_name(name: str) -> str:
    if name not in STRATEGIES:
        raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}.")
    return name


@functools.cache
def resolve_strategy(name: str):
    """The tf.distribute.Strategy for `name` (memoised: a TPU system is initialised once per process)."""
    import tensorflow as tf

    check_strategy_name(name)
    if name == "auto":
        if _tpu_present():
            try:
                return _tpu()
            except UserError as e:
                warnings.warn(f"--strategy auto: {e} Falling back to the local devices.", stacklevel=2)
        if os.environ.get("TF_CONFIG"):
            return _multiworker()
        if len(tf.config.list_logical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return _mirrored()
    if name == "multiworker":
        return _multiworker()
    return _tpu()


def _mirrored():
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    cpus = tf.config.list_logical_devices("CPU")
    if not gpus and len(cpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in cpus])
    raise UserError(f"--strategy mirrored needs more than one GPU, found {len(gpus)}; use default or auto.")


def _multiworker():
    import json

    import tensorflow as tf

    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", ""))["cluster"]
    except (ValueError, KeyError, TypeError):
        raise UserError(
            "--strategy multiworker needs TF_CONFIG (a JSON with cluster and task) in the environment."
        ) from None
    if not cluster.get("worker"):
        raise UserError("--strategy multiworker: TF_CONFIG names no workers (cluster.worker is empty).")
    return tf.distribute.MultiWorkerMirroredStrategy()


def _tpu_present() -> bool:
    """A TPU to ask for: a remote one named in the environment, or local TPU chips (a TPU VM)."""
    import glob

    return bool(os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME") or glob.glob("/dev/accel*"))


def _tpu():
    import tensorflow as tf

    if not _tpu_present():
        raise UserError(
            "--strategy tpu: no TPU here (no COLAB_TPU_ADDR, TPU_NAME or /dev/accel*); use auto or default."
        )
    remote = os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME")
    try:
        # Colab's older runtime and GCP: the address/name from the environment; a TPU VM: "local".
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=None if remote else "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise UserError(f"--strategy tpu: no TPU found ({str(e).splitlines()[0][:120]}).") from None
    return tf.distribute.TPUStrategy(resolver)


def strategy_name(strategy) -> str:
    """A short description for run.json and the console: kind and number of replicas."""
    kind = type(strategy).__name__.replace("Strategy", "").lower() or "default"
    if kind.startswith("_default"):
        kind = "default"
    return f"{kind} x{strategy.num_replicas_in_sync}"


def replicated_fn(forward: Callable, strategy) -> Callable:
    """`forward` run over a global batch split across the replicas; features back in input order.

    `forward` must be a per-example function of one float32 batch (the frozen base); the
    result is a tf.Tensor like the single-device function returns.
    """
    import tensorflow as tf

    n_rep = strategy.num_replicas_in_sync

    @tf.function(reduce_retracing=True)
    def step(dist_x):
        return strategy.run(forward, args=(dist_x,))

    def run(x):
        x = tf.convert_to_tensor(x, tf.float32)
        n = int(x.shape[0])
        per = max(1, -(-n // n_rep))
        pad = per * n_rep - n
        if pad:
            x = tf.concat([x, tf.zeros((pad, *x.shape[1:]), x.dtype)], axis=0)
        pieces = tf.split(x, n_rep)
        dist = strategy.experimental_distribute_values_from_function(lambda ctx: pieces[ctx.replica_id_in_sync_group])
        out = strategy.gather(step(dist), axis=0)  # replica order = input order
        return out[:n]

    run.replicas = n_rep  # type: ignore[attr-defined]
    return run

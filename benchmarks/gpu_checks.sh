#!/usr/bin/env bash
# The GPU checks in one run, for a machine with a CUDA device (see benchmarks/README.md):
#   1. the machine and the versions;
#   2. bench_fit.py scaling of the hierarchical gradient with N subjects on the GPU (1 ... 4096);
#   3. the gpu test tier (tests/test_gpu.py): log density and gradient equal on CPU and GPU, a short fit with
#      vectorised chains.
# usage: benchmarks/gpu_checks.sh OUTDIR      (run from the repository root; PYTHON, DEVICE, SCALING,
#        SCALING_SOLVER, SCALING_TIMEOUT, TEST_TIMEOUT override the defaults below)
set -u
out=${1:?usage: benchmarks/gpu_checks.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 EQX_ON_ERROR=nan MYOGLUCOSE_ROOT=$PWD
py=${PYTHON:-python}
device=${DEVICE:-gpu}
(nvidia-smi || true; nproc; free -g) > "$out/machine.txt" 2>&1
$py -c "import jax, jaxlib, diffrax, equinox, numpyro; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__,
'diffrax', diffrax.__version__, 'equinox', equinox.__version__, 'numpyro', numpyro.__version__, jax.devices())" \
  2>&1 | tee "$out/versions.txt"
# shellcheck disable=SC2086  # SCALING is a list of numbers
timeout "${SCALING_TIMEOUT:-330}" $py benchmarks/bench_fit.py --device "$device" --sections scaling \
  --scaling ${SCALING:-1 4 16 64 256 1024 4096} --scaling-solver "${SCALING_SOLVER:-auto}" --repeats 5 --out "$out/fit_$device.json" 2>&1 | tee "$out/bench_fit_$device.log"
MYOGLUCOSE_TEST_DEVICE=auto timeout "${TEST_TIMEOUT:-200}" $py -m pytest -m gpu tests/test_gpu.py -v --durations=5 -p no:cacheprovider \
  2>&1 | tee "$out/test_gpu.log"

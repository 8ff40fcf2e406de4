# scripts/env.sh: environment for running Switchyard and its peers on this machine (sourced).
# OpenMPI refuses root without these; more ranks than cores needs oversubscription.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
# Debian's OpenBLAS (PyTorch's BLAS here) falls back to a generic core on CPUs newer than it knows
# (5-7x slower); scripts/openblas_core.py names the core to force then, and nothing where OpenBLAS
# already fits the CPU (forcing an AVX-512 core on an AVX2-only CPU would be wrong).
if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ -x /usr/bin/python3 ]; then
  _sy_core=$(/usr/bin/python3 "$(dirname "${BASH_SOURCE[0]}")/openblas_core.py" 2>/dev/null || true)
  [ -n "$_sy_core" ] && export OPENBLAS_CORETYPE=$_sy_core
  unset _sy_core
fi
SWITCHYARD_CORES=$(nproc)

# scripts/env.sh: environment for running Switchyard and its peers on this machine (sourced).
# OpenMPI refuses root without these; more ranks than cores needs oversubscription.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
# Debian's OpenBLAS (used by PyTorch here) misdetects this CPU without it: 5-7x slower.
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
SWITCHYARD_CORES=$(nproc)

#pragma once
/// \file
/// Data-parallel reductions (the interface, the local default) and the dist:: counterparts of
/// the batch-level functions. <rlpo/dist/mpi.hpp> (MpiReductions) is not included here: it
/// needs MPI (`rlpo::mpi`).
#include <rlpo/dist/aggregation.hpp>
#include <rlpo/dist/preference.hpp>
#include <rlpo/dist/reductions.hpp>
#include <rlpo/dist/rollout.hpp>
#include <rlpo/dist/train.hpp>

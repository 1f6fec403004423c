#pragma once
/// \file Umbrella of the core: views, errors, names, stable math, aggregation, metrics, results,
/// threads per call.
#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/math.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/names.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/threads.hpp>
#include <rlpo/core/types.hpp>

#pragma once
/// \file The logits module: per-token log-probabilities (and entropies) from `[N, V]` logits.
#include <rlpo/logits/token_logps.hpp>

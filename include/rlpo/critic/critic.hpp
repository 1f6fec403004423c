#pragma once
/// \file Umbrella of the critic module: value losses (clipped, SAFE).
#include <rlpo/critic/value_loss.hpp>

#pragma once
/// \file Umbrella of the regularizers module: the entropy bonus.
#include <rlpo/regularizers/entropy.hpp>

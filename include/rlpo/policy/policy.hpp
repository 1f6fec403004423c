#pragma once
/// \file Umbrella of the policy-gradient surrogates.
#include <rlpo/policy/ppo_clip.hpp>

#pragma once
/// \file The rlpo umbrella header: every module except rlpo/testing and rlpo/format.hpp.
#include <rlpo/core/core.hpp>
#include <rlpo/critic/critic.hpp>
#include <rlpo/dist/dist.hpp>
#include <rlpo/distill/distill.hpp>
#include <rlpo/logits/logits.hpp>
#include <rlpo/penalties/penalties.hpp>
#include <rlpo/policy/policy.hpp>
#include <rlpo/preference/preference.hpp>
#include <rlpo/regularizers/regularizers.hpp>
#include <rlpo/rollout/rollout.hpp>
#include <rlpo/train/train.hpp>
#include <rlpo/version.hpp>

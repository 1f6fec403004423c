#pragma once
/// \file Umbrella of the policy-gradient surrogates.
#include <rlpo/policy/ace.hpp>
#include <rlpo/policy/cispo.hpp>
#include <rlpo/policy/corrections.hpp>
#include <rlpo/policy/cov.hpp>
#include <rlpo/policy/dppo.hpp>
#include <rlpo/policy/dro.hpp>
#include <rlpo/policy/gmpo.hpp>
#include <rlpo/policy/gspo.hpp>
#include <rlpo/policy/policy_loss.hpp>
#include <rlpo/policy/ppo_clip.hpp>
#include <rlpo/policy/reinforce.hpp>
#include <rlpo/policy/sapo.hpp>
#include <rlpo/policy/trrd.hpp>

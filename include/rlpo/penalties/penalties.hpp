#pragma once
/// \file Umbrella of the divergence penalties.
#include <rlpo/penalties/kl_controllers.hpp>
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/penalties/occupancy_chi2.hpp>
#include <rlpo/penalties/velocity_mse.hpp>
#include <rlpo/penalties/vocab_divergence.hpp>

#pragma once
/// \file Umbrella of the rollout module: groups, rollout batch, reward shaping, advantages,
/// filters, best-of-N, SPAE (values only; the training step is in rlpo/train).
#include <rlpo/rollout/advantages.hpp>
#include <rlpo/rollout/batch.hpp>
#include <rlpo/rollout/best_of_n.hpp>
#include <rlpo/rollout/filters.hpp>
#include <rlpo/rollout/groups.hpp>
#include <rlpo/rollout/returns.hpp>
#include <rlpo/rollout/shaping.hpp>
#include <rlpo/rollout/spae.hpp>
#include <rlpo/rollout/tokens.hpp>

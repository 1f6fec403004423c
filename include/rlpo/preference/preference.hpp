#pragma once
/// \file Umbrella of the preference losses (the DPO family and its f-DPO scores; RPO, NeMo's
/// reward-aware PO, INPO, HyPO).
#include <rlpo/preference/dpo.hpp>
#include <rlpo/preference/f_divergence.hpp>
#include <rlpo/preference/hypo.hpp>
#include <rlpo/preference/inpo.hpp>
#include <rlpo/preference/reward_aware.hpp>
#include <rlpo/preference/rpo.hpp>

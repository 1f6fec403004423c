#pragma once
/// \file Umbrella of the preference losses (the DPO family and its f-DPO scores; the unpaired
/// KTO and BCO).
#include <rlpo/preference/bco.hpp>
#include <rlpo/preference/dpo.hpp>
#include <rlpo/preference/f_divergence.hpp>
#include <rlpo/preference/kto.hpp>

#pragma once
/// \file Umbrella of the preference losses: the DPO family and its f-DPO scores, LD-DPO; the
/// unpaired KTO and BCO; the reference-free CPO / SimPO / AlphaPO and ORPO; the seed methods
/// RPO, INPO, HyPO and NeMo-Aligner's reward-aware preference optimisation.
#include <rlpo/preference/bco.hpp>
#include <rlpo/preference/cpo.hpp>
#include <rlpo/preference/dpo.hpp>
#include <rlpo/preference/f_divergence.hpp>
#include <rlpo/preference/hypo.hpp>
#include <rlpo/preference/inpo.hpp>
#include <rlpo/preference/kto.hpp>
#include <rlpo/preference/ld_dpo.hpp>
#include <rlpo/preference/orpo.hpp>
#include <rlpo/preference/reward_aware.hpp>
#include <rlpo/preference/rpo.hpp>

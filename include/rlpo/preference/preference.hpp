#pragma once
/// \file Umbrella of the preference losses: the DPO family and its f-DPO scores, LD-DPO; the
/// unpaired KTO and BCO; the reference-free CPO / SimPO / AlphaPO and ORPO.
#include <rlpo/preference/bco.hpp>
#include <rlpo/preference/cpo.hpp>
#include <rlpo/preference/dpo.hpp>
#include <rlpo/preference/f_divergence.hpp>
#include <rlpo/preference/kto.hpp>
#include <rlpo/preference/ld_dpo.hpp>
#include <rlpo/preference/orpo.hpp>

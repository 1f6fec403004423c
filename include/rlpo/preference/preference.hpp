#pragma once
/// \file Umbrella of the preference losses (the DPO family).
#include <rlpo/preference/dpo.hpp>

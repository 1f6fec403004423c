#pragma once
// Headers every test includes, precompiled once for the whole suite.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <Eigen/Core>
#include <rlpo/testing/gradcheck.hpp>
#include <rlpo/testing/random.hpp>

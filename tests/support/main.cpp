// Catch2 main for the rlpo test suite (v2 needs a translation unit that defines the runner;
// with v3 the runner comes from Catch2::Catch2WithMain and this file is empty).
#ifndef RLPO_CATCH_V3
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#endif

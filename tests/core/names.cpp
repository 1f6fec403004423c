// The one NameTable behind every name-based factory: lookup, canonical names, the error message,
// and each converted parser's to_string ∘ parse round trip.
#include "support/catch.hpp"
#include "support/checks.hpp"

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/names.hpp>
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/policy/policy_loss.hpp>
#include <rlpo/rollout/advantages.hpp>

#include <string>

namespace {
enum class Color { Red, Green, Blue };
constexpr rlpo::NameRow<Color> color_names[] = {
    {"red", Color::Red}, {"green", Color::Green}, {"crimson", Color::Red}, {"lime", Color::Green}};
constexpr rlpo::NameTable color_table{color_names};
}  // namespace

TEST_CASE("names: parse finds every spelling, name_of the first row of a value") {
    CHECK(color_table.parse("f", "color", "red") == Color::Red);
    CHECK(color_table.parse("f", "color", "crimson") == Color::Red);
    CHECK(color_table.parse("f", "color", "lime") == Color::Green);
    CHECK(std::string(color_table.name_of(Color::Red)) == "red");
    CHECK(std::string(color_table.name_of(Color::Green)) == "green");
    CHECK(std::string(color_table.name_of(Color::Blue)) == "?");  // no row
    CHECK(color_table.contains("crimson"));
    CHECK_FALSE(color_table.contains("Red"));  // case-sensitive, as the anchors' configs
    STATIC_REQUIRE(color_table.size() == 4);
}

TEST_CASE("names: an unknown name throws the full message listing every name in order") {
    try {
        color_table.parse("paint::mix", "color", "blue");
        FAIL("no throw");
    } catch (const rlpo::invalid_argument& e) {
        CHECK(std::string(e.what()) ==
              "rlpo::paint::mix(): name: unknown color 'blue'; valid names: red, green, crimson, "
              "lime");
    }
}

TEST_CASE("names: every converted parser round-trips its canonical names") {
    using rlpo::Aggregation;
    for (Aggregation a :
         {Aggregation::TokenMean, Aggregation::TokenSum, Aggregation::SeqMeanTokenSum,
          Aggregation::SeqMeanTokenMean, Aggregation::SeqMeanTokenSumNorm})
        CHECK(rlpo::parse_aggregation(rlpo::to_string(a)) == a);
    CHECK(std::string(rlpo::to_string(Aggregation::SeqMeanTokenSumNorm)) ==
          "seq-mean-token-sum-norm");

    using rlpo::policy::PolicyLoss;
    for (PolicyLoss l :
         {PolicyLoss::Vanilla, PolicyLoss::GPG, PolicyLoss::GSPO, PolicyLoss::CISPO,
          PolicyLoss::SAPO, PolicyLoss::GeoMean, PolicyLoss::ClipCov, PolicyLoss::KLCov,
          PolicyLoss::DPPOTV, PolicyLoss::DPPOKL, PolicyLoss::DRO})
        CHECK(rlpo::policy::parse_policy_loss(rlpo::policy::to_string(l)) == l);
    CHECK(std::string(rlpo::policy::to_string(PolicyLoss::GPG)) == "gpg");
    CHECK(std::string(rlpo::policy::to_string(PolicyLoss::GeoMean)) == "geo_mean");

    using rlpo::penalties::KLEstimator;
    for (KLEstimator e : {KLEstimator::K1, KLEstimator::Abs, KLEstimator::K2, KLEstimator::K3,
                          KLEstimator::K1Plus, KLEstimator::AbsPlus, KLEstimator::K3Plus})
        CHECK(rlpo::penalties::parse_kl_estimator(rlpo::penalties::to_string(e)) == e);

    using rlpo::rollout::AdvantageEstimator;
    for (AdvantageEstimator e :
         {AdvantageEstimator::GAE, AdvantageEstimator::GRPO, AdvantageEstimator::DrGRPO,
          AdvantageEstimator::RLOO, AdvantageEstimator::ReinforcePP,
          AdvantageEstimator::ReinforcePPBaseline, AdvantageEstimator::ReMax,
          AdvantageEstimator::OPO, AdvantageEstimator::GRPOPassK, AdvantageEstimator::PassK,
          AdvantageEstimator::GDPO})
        CHECK(rlpo::rollout::parse_advantage_estimator(rlpo::rollout::to_string(e)) == e);
    CHECK(std::string(rlpo::rollout::to_string(AdvantageEstimator::ReinforcePPBaseline)) ==
          "reinforce_plus_plus_baseline");
}

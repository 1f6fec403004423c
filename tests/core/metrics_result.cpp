// Metrics merging, result/gradient destinations, and the fmt formatters.
#include "support/catch.hpp"
#include "support/checks.hpp"

#include <rlpo/format.hpp>
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/policy/ppo_clip.hpp>
#include <rlpo/testing/random.hpp>

#include <limits>
#include <stdexcept>

using rlpo::Mat;
namespace rt = rlpo::testing;

TEST_CASE("metrics merge as exact means over the union", "[core][metrics]") {
    rlpo::Metrics a, b;
    a.add("pg_clipfrac", 1.0, 4.0);
    b.add("pg_clipfrac", 3.0, 4.0);
    b.set("kl_coef", 0.1);
    a.merge(b);
    CHECK(a["pg_clipfrac"] == Approx(0.5));
    CHECK(a.contains("kl_coef"));
    CHECK_FALSE(a.contains("nope"));
    CHECK_THROWS_AS(a["nope"], std::out_of_range);
    CHECK(a.prefixed("actor/").contains("actor/pg_clipfrac"));
    rlpo::Metrics e;
    e.add("x", 0.0, 0.0);
    CHECK(e["x"] == 0.0);
}

TEST_CASE("GradientOut: own, write, add with coefficient, none", "[core][result]") {
    rt::Generator gen(2);
    const Mat<double> lp = gen.logprobs(3, 5), old = gen.perturbed(lp, 0.2), A = gen.normal(3, 5);
    const Mat<double> m = gen.mask(3, 5);
    const auto own = rlpo::policy::ppo_clip(lp, old, A, m);
    Mat<double> buf = Mat<double>::Constant(3, 5, 7.0);
    const auto w = rlpo::policy::ppo_clip(lp, old, A, m, {}, {}, rlpo::write_to(buf, 2.0));
    CHECK(w.grad.size() == 0);
    CHECK(w.value == Approx(2.0 * own.value));
    CHECK(rlpo_test::max_rel_err(buf, Mat<double>(2.0 * own.grad)) < 1e-15);
    Mat<double> acc = Mat<double>::Constant(3, 5, 1.0);
    rlpo::policy::ppo_clip(lp, old, A, m, {}, {}, rlpo::add_to(acc, 0.5));
    CHECK(rlpo_test::max_rel_err(acc, Mat<double>(Mat<double>::Ones(3, 5) + 0.5 * own.grad)) <
          1e-15);
    const auto none = rlpo::policy::ppo_clip(lp, old, A, m, {}, {}, rlpo::no_grad<double>());
    CHECK(none.grad.size() == 0);
    CHECK(none.value == own.value);
    // A block of a larger buffer (strided destination).
    Mat<double> big = Mat<double>::Zero(5, 9);
    rlpo::MatRef<double> blk(big.block(1, 2, 3, 5));
    rlpo::policy::ppo_clip(lp, old, A, m, {}, {}, rlpo::write_to<double>(blk));
    CHECK(rlpo_test::max_rel_err(Mat<double>(big.block(1, 2, 3, 5)), own.grad) == 0.0);
    CHECK(big.col(0).isZero());
    Mat<double> wrong(2, 5);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::ppo_clip(lp, old, A, m, {}, {}, rlpo::write_to(wrong)),
        "GradientOut: expected shape [3, 5]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::ppo_clip(lp, old, A, m, {}, {},
                               rlpo::write_to(buf, std::numeric_limits<double>::quiet_NaN())),
        "GradientOut::coef");
}

TEST_CASE("check_finite_result names a non-finite value or metric", "[core][result]") {
    rlpo::Metrics ok;
    ok.add("kl", 3.0, 2.0);
    rlpo::detail::check_finite_result("core::test", 1.5, ok);  // finite: no throw
    RLPO_REQUIRE_NUMERICAL_ERROR(rlpo::detail::check_finite_result(
                                     "core::test", std::numeric_limits<double>::infinity(), ok),
                                 "rlpo::core::test(): value: the loss is not finite");
    rlpo::Metrics bad = ok;
    bad.add("pg_clipfrac", std::numeric_limits<double>::quiet_NaN(), 1.0);
    RLPO_REQUIRE_NUMERICAL_ERROR(rlpo::detail::check_finite_result("core::test", 0.0, bad),
                                 "metric 'pg_clipfrac' is not finite");
    // numerical_error is a std::runtime_error, not an invalid_argument.
    bool runtime = false;
    try {
        rlpo::detail::check_finite_result("core::test", 0.0, bad);
    } catch (const std::runtime_error&) {
        runtime = true;
    }
    CHECK(runtime);
}

TEST_CASE("fmt formatters print metrics, results and modes", "[core][format]") {
    const Mat<double> lp = Mat<double>::Constant(2, 2, -1.0);
    const auto r = rlpo::penalties::kl_penalty(lp, lp, Mat<double>::Ones(2, 2));
    const std::string s = fmt::format("{}", r);
    CHECK(s.find("value=0") == 0);
    CHECK(s.find("grad=[2x2]") != std::string::npos);
    CHECK(s.find("kl=0") != std::string::npos);
    CHECK(fmt::format("{}", rlpo::Aggregation::SeqMeanTokenMean) == "seq-mean-token-mean");
}

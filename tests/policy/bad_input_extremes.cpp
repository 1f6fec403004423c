// Every policy_loss name under extreme finite inputs: the rule of docs/contract.md section 5 —
// a finite value, gradient and metrics, or a typed rlpo::invalid_argument /
// rlpo::numerical_error. Never a silent NaN / inf, never another exception.
#include "policy/policy_support.hpp"

#include <rlpo/policy/policy_loss.hpp>

#include <functional>
#include <string>
#include <vector>

using namespace policy_test;
namespace rp = rlpo::policy;

namespace {

const std::vector<std::string>& all_names() {
    static const std::vector<std::string> n{"vanilla", "grpo",      "bnpo", "dr_grpo",    "dapo",
                                            "gpg",     "reinforce", "gspo", "gspo_token", "cispo",
                                            "sapo",    "geo_mean",  "gmpo", "clip_cov",   "kl_cov",
                                            "dppo_tv", "dppo_kl",   "dro",  "luspo",      "vespo"};
    return n;
}

enum class Outcome { Finite, InvalidArgument, NumericalError };

/// Run one call and classify it; anything else (a non-finite result, another exception) fails.
template <class S>
Outcome classify(const std::function<rlpo::Result<S>()>& call) {
    try {
        const auto r = call();
        INFO("value " << r.value);
        CHECK(std::isfinite(r.value));
        CHECK(r.grad.allFinite());
        for (const auto& e : r.metrics) {
            INFO("metric " << e.first);
            CHECK(std::isfinite(e.second.value()));
        }
        return Outcome::Finite;
    } catch (const rlpo::numerical_error& e) {
        INFO(e.what());
        CHECK(std::string(e.what()).find("rlpo::") == 0);
        return Outcome::NumericalError;
    } catch (const rlpo::invalid_argument& e) {
        INFO(e.what());
        CHECK(std::string(e.what()).find("rlpo::") == 0);
        return Outcome::InvalidArgument;
    }
}

struct Case {
    const char* what;
    Mat<double> logp, old, adv, mask;
};

std::vector<Case> extreme_cases(double big_lp, double big_a, double big_m) {
    const Index B = 3, T = 5;
    std::vector<Case> cs;
    Mat<double> lp(B, T), old(B, T), a(B, T), m = Mat<double>::Ones(B, T);
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t) {
            lp(i, t) = -0.1 * static_cast<double>(1 + i + t);
            old(i, t) = -0.2 * static_cast<double>(1 + t);
            a(i, t) = (i + t) % 2 ? 1.0 : -1.0;
        }
    m(2, 4) = 0;
    Case c{"log-probs ±big", lp, old, a, m};
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t) c.logp(i, t) = (i + t) % 2 ? -big_lp : big_lp;
    cs.push_back(c);
    c = Case{"old log-probs -big", lp, old, a, m};
    c.old.setConstant(-big_lp);
    cs.push_back(c);
    c = Case{"both log-probs -big", lp, old, a, m};
    c.logp.setConstant(-big_lp);
    c.old.setConstant(-big_lp);
    cs.push_back(c);
    c = Case{"advantages ±big", lp, old, a, m};
    c.adv *= big_a;
    cs.push_back(c);
    c = Case{"mask weights big", lp, old, a, m * big_m};
    cs.push_back(c);
    c = Case{"everything big", lp, old, a * big_a, m * big_m};
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t) c.logp(i, t) = (i + t) % 3 ? -big_lp : 0.5 * big_lp;
    cs.push_back(c);
    c = Case{"denormal advantages", lp, old, a * 4e-320, m};
    cs.push_back(c);
    c = Case{"denormal mask weights", lp, old, a, m * 4e-320};
    cs.push_back(c);
    c = Case{"zero-length rows", lp, old, a, Mat<double>::Zero(B, T)};
    c.mask(1, 2) = 1;
    cs.push_back(c);
    return cs;
}

template <class S>
void walk(double big_lp, double big_a, double big_m) {
    for (const Case& c : extreme_cases(big_lp, big_a, big_m)) {
        const Mat<S> lp = c.logp.cast<S>(), old = c.old.cast<S>(), adv = c.adv.cast<S>(),
                     m = c.mask.cast<S>(), w = Mat<S>::Constant(c.logp.rows(), c.logp.cols(), S(2));
        for (const auto& name : all_names())
            for (rp::Anchor anchor : {rp::Anchor::Paper, rp::Anchor::Verl, rp::Anchor::TRL})
                for (rlpo::Aggregation mode : rlpo_test::all_modes())
                    for (bool weighted : {false, true}) {
                        INFO(c.what << " | " << name << " anchor " << static_cast<int>(anchor)
                                    << " mode " << rlpo::to_string(mode) << " weighted " << weighted
                                    << " | " << (sizeof(S) == 4 ? "float" : "double"));
                        const auto o = rp::make_policy_loss(name, anchor);
                        rlpo::Normalizer n;
                        n.mode = mode;
                        rp::TokenWeights<S> tw;
                        if (weighted) tw.emplace(w);
                        classify<S>([&] { return rp::policy_loss(o, lp, old, adv, m, n, {}, tw); });
                        // value only: the same rule
                        classify<S>([&] {
                            return rp::policy_loss(o, lp, old, adv, m, n, rlpo::no_grad<S>(), tw);
                        });
                    }
    }
}

}  // namespace

TEST_CASE("policy_loss: every name under extreme finite inputs (double)",
          "[policy][policy_loss][bad_input]") {
    walk<double>(1e30, 1e300, 1e30);
    walk<double>(1e300, 1e300, 1e300);
}

TEST_CASE("policy_loss: every name under extreme finite inputs (float)",
          "[policy][policy_loss][bad_input]") {
    walk<float>(1e30, 1e30, 1e30);
    walk<float>(3e38, 3e38, 3e38);
}

TEST_CASE("policy_loss: the issue's cases", "[policy][policy_loss][bad_input]") {
    // logp = {−inf, −inf}, A = {1, −1}: GPG and CISPO used to return NaN; now a typed error
    Mat<double> lp(1, 2), old = Mat<double>::Zero(1, 2), a(1, 2), m = Mat<double>::Ones(1, 2);
    lp << -std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity();
    a << 1, -1;
    for (const char* name : {"gpg", "cispo"})
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::policy_loss(rp::make_policy_loss(name), lp, old, a, m),
                                        "give a non-finite loss or gradient");
    // KL-Cov with finite ±1e30 log-ratios: r = e^{1e30} overflows per token → named
    lp << 1e30, -1e30;
    CHECK(classify<double>([&] {
              return rp::policy_loss(rp::make_policy_loss("kl_cov"), lp, old, a, m);
          }) != Outcome::Finite);
}

TEST_CASE("policy_loss: a NaN input outranks an overflow in an earlier row",
          "[policy][policy_loss][bad_input]") {
    // Row 0: finite inputs whose weighted gradient (mask weight 1e30 × advantage 1e30)
    // overflows a float; row 1: NaN under a non-zero mask. The caller's bad input is reported,
    // as rlpo::invalid_argument naming the NaN, whatever the row order or the threads.
    Mat<float> lp(2, 3), old = Mat<float>::Constant(2, 3, -1.0F), a(2, 3), m(2, 3);
    lp << -1.0F, -1.2F, -0.8F, -1.0F, std::numeric_limits<float>::quiet_NaN(), -1.0F;
    a << 1e30F, -1e30F, 1e30F, 1.0F, 1.0F, 1.0F;
    m << 1e30F, 1e30F, 1e30F, 1.0F, 1.0F, 1.0F;
    rlpo::Normalizer n;
    n.mode = rlpo::Aggregation::TokenSum;
    for (const auto& name : all_names()) {
        INFO(name);
        const auto o = rp::make_policy_loss(name);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::policy_loss(o, lp, old, a, m, n), "NaN");
    }
}

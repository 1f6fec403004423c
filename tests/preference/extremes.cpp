// The non-finite rule over the whole preference family: finite inputs (log-probs up to ±1e300
// in double, ±3e38 in float; lengths, rewards and weights as large) give a finite value,
// gradient and metrics, or a typed rlpo::invalid_argument / rlpo::numerical_error — never a
// silent inf or NaN. Every loss type, in float and double, over a grid of extreme inputs.
#include "support/catch.hpp"
#include "support/checks.hpp"

#include <rlpo/preference/preference.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

using rlpo::Index;
using rlpo::Mat;
namespace pf = rlpo::preference;

namespace {
template <class S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

// Whether the result obeys the rule; `what` says why not.
template <class R>
bool finite_result(const R& r, std::string& what) {
    std::ostringstream os;
    if (!std::isfinite(r.value)) os << "value " << r.value << "; ";
    for (const auto& e : r.metrics)
        if (!std::isfinite(e.second.value())) os << "metric " << e.first << "; ";
    what = os.str();
    return what.empty();
}
template <class M>
bool finite_mat(const M& g) {
    for (Index i = 0; i < g.rows(); ++i)
        for (Index j = 0; j < g.cols(); ++j)
            if (!std::isfinite(static_cast<double>(g(i, j)))) return false;
    return true;
}

// Runs `call`; a typed exception passes, otherwise every output must be finite.
struct Rule {
    int calls = 0, thrown = 0, violations = 0;
    std::string first;
    template <class F>
    void check(const std::string& name, F&& call) {
        ++calls;
        try {
            std::string why;
            if (!call(why)) {
                if (violations++ == 0) first = name + ": " + why;
            }
        } catch (const rlpo::invalid_argument&) {
            ++thrown;
        } catch (const rlpo::numerical_error&) {
            ++thrown;
        }
    }
};

template <class S>
std::vector<double> grid() {
    const double big = std::is_same<S, float>::value ? 3e38 : 1e300;
    return {0.0, -1.0, -700.0, 700.0, -1e30, 1e30, -big, big, 1e-310};
}

template <class S>
void run_family(Rule& rule) {
    const std::vector<double> g = grid<S>();
    const std::size_t n = g.size();
    int k = 0;
    // Pairs of two: each input draws from the grid with a different stride, so the 4 inputs
    // cover many combinations.
    for (std::size_t a = 0; a < n; ++a)
        for (std::size_t b = 0; b < n; ++b) {
            ++k;
            Vec<S> pc(2), pr(2), rc(2), rr(2), pv(2), prv(2);
            pc << S(g[a]), S(g[(a + k) % n]);
            pr << S(g[b]), S(g[(b + 2 * k) % n]);
            rc << S(g[(a + b) % n]), S(g[(a * 3 + b) % n]);
            rr << S(g[(a + 2 * b) % n]), S(g[(k * 5) % n]);
            pv << S(g[(b + 1) % n]), S(g[(a + 3) % n]);
            prv << S(g[(a + 5) % n]), S(g[(b * 7) % n]);
            pf::CompletionLengths len;
            len.chosen = Eigen::VectorXd::Constant(2, std::abs(g[(a + 4) % n]));
            len.rejected = Eigen::VectorXd::Constant(2, std::abs(g[(b + 6) % n]));
            const Eigen::VectorXd w = Eigen::VectorXd::Constant(2, std::abs(g[(a + b + 1) % n]));
            const std::string at =
                " at grid (" + std::to_string(a) + ", " + std::to_string(b) + ")";
            for (pf::DPOLoss l : {pf::DPOLoss::Sigmoid, pf::DPOLoss::Hinge, pf::DPOLoss::IPO,
                                  pf::DPOLoss::Robust, pf::DPOLoss::EXOPair, pf::DPOLoss::NCAPair,
                                  pf::DPOLoss::SPPOHard, pf::DPOLoss::AOT, pf::DPOLoss::AOTUnpaired,
                                  pf::DPOLoss::APOZero, pf::DPOLoss::APODown, pf::DPOLoss::DiscoPOP,
                                  pf::DPOLoss::BCOPair, pf::DPOLoss::SigmoidNorm, pf::DPOLoss::SFT})
                for (pf::FDivergence f : {pf::FDivergence::ReverseKL, pf::FDivergence::ForwardKL,
                                          pf::FDivergence::JS, pf::FDivergence::Alpha}) {
                    pf::DPOOptions o = pf::DPOOptions::of(l, 0.1);
                    o.f_divergence = f;
                    if (l == pf::DPOLoss::EXOPair || l == pf::DPOLoss::Robust)
                        o.label_smoothing = 1e-3;
                    const bool weighted = l != pf::DPOLoss::AOT && l != pf::DPOLoss::AOTUnpaired;
                    rule.check(
                        std::string("dpo_loss ") + pf::to_string(l) + " " + pf::to_string(f) + at,
                        [&](std::string& why) {
                            const auto r = pf::dpo_loss(
                                pc, pr, rc, rr, o, {}, len,
                                weighted ? std::optional<Eigen::VectorXd>(w) : std::nullopt);
                            if (!finite_mat(r.grad)) why += "gradient; ";
                            std::string m;
                            if (!finite_result(r, m)) why += m;
                            return why.empty();
                        });
                }
            for (pf::KTOLoss l : {pf::KTOLoss::KTO, pf::KTOLoss::APOZeroUnpaired}) {
                pf::KTOOptions o;
                o.loss = l;
                rule.check(std::string("kto_loss ") + pf::to_string(l) + at, [&](std::string& why) {
                    const auto r =
                        pf::kto_loss(pc, pr, rc, rr,
                                     pf::KLBaseline::from_logps(pv.template cast<double>(),
                                                                prv.template cast<double>()),
                                     o);
                    if (!finite_mat(r.grad)) why += "gradient; ";
                    std::string m;
                    if (!finite_result(r, m)) why += m;
                    return why.empty();
                });
            }
            rule.check("bco_loss" + at, [&](std::string& why) {
                pf::BCOOptions o;
                o.delta = g[(a + b) % n] / 1e10;
                const auto r = pf::bco_loss(pc, pr, rc, rr, o);
                if (!finite_mat(r.grad)) why += "gradient; ";
                std::string m;
                if (!finite_result(r, m)) why += m;
                return why.empty();
            });
            for (pf::CPOLoss l :
                 {pf::CPOLoss::Sigmoid, pf::CPOLoss::Hinge, pf::CPOLoss::IPO, pf::CPOLoss::SimPO})
                for (double alpha : {0.0, 0.5}) {
                    pf::CPOOptions o;
                    o.loss = l;
                    o.alpha = alpha;
                    rule.check(std::string("cpo_loss ") + pf::to_string(l) +
                                   " alpha=" + std::to_string(alpha) + at,
                               [&](std::string& why) {
                                   const auto r = pf::cpo_loss(pc, pr, o, {}, len);
                                   if (!finite_mat(r.grad)) why += "gradient; ";
                                   std::string m;
                                   if (!finite_result(r, m)) why += m;
                                   return why.empty();
                               });
                }
            rule.check("orpo_loss" + at, [&](std::string& why) {
                const auto r = pf::orpo_loss(pc, pr, len);
                if (!finite_mat(r.grad)) why += "gradient; ";
                std::string m;
                if (!finite_result(r, m)) why += m;
                return why.empty();
            });
            rule.check("inpo_loss" + at, [&](std::string& why) {
                const auto r = pf::inpo_loss(pc, pr, rc, rr, pv, prv);
                if (!finite_mat(r.grad)) why += "gradient; ";
                std::string m;
                if (!finite_result(r, m)) why += m;
                return why.empty();
            });
            for (pf::RewardAwareLoss l :
                 {pf::RewardAwareLoss::DPO, pf::RewardAwareLoss::IPO, pf::RewardAwareLoss::Sq,
                  pf::RewardAwareLoss::BwdKL, pf::RewardAwareLoss::FwdKL}) {
                pf::RewardAwareOptions o;
                o.loss = l;
                o.sft_loss_weight = 0.5;
                rule.check(std::string("reward_aware_po_loss ") + pf::to_string(l) + at,
                           [&](std::string& why) {
                               const auto r = pf::reward_aware_po_loss(pc, pr, rc, rr, pv, prv, o);
                               if (!finite_mat(r.grad)) why += "gradient; ";
                               std::string m;
                               if (!finite_result(r, m)) why += m;
                               return why.empty();
                           });
            }
            rule.check("rpo_loss" + at, [&](std::string& why) {
                const auto r = pf::rpo_loss(pc, pr, rc, rr);
                if (!finite_mat(r.grad)) why += "gradient; ";
                std::string m;
                if (!finite_result(r, m)) why += m;
                return why.empty();
            });
            rule.check("hypo_loss" + at, [&](std::string& why) {
                pf::HyPOOptions o;
                o.lambda = 0.5;
                Mat<S> on(1, 2), onr(1, 2);
                on << pv(0), pv(1);
                onr << prv(0), prv(1);
                const auto r = pf::hypo_loss(pc, pr, rc, rr, on, onr, o);
                if (!finite_mat(r.grad_pairs) || !finite_mat(r.grad_online)) why += "gradient; ";
                std::string m;
                if (!finite_result(r, m)) why += m;
                return why.empty();
            });
        }
}
}  // namespace

TEMPLATE_TEST_CASE("preference losses: extreme finite inputs give finite results or a typed error",
                   "[preference][bad-input][extremes]", float, double) {
    Rule rule;
    run_family<TestType>(rule);
    INFO(rule.calls << " calls, " << rule.thrown << " typed errors, " << rule.violations
                    << " violations; first: " << rule.first);
    CHECK(rule.violations == 0);
    CHECK(rule.calls > 1000);
    CHECK(rule.thrown * 2 < rule.calls);  // most extreme inputs still give a finite result
}

TEST_CASE("preference losses: an overflowing derivative is a numerical_error naming the entry",
          "[preference][bad-input]") {
    Eigen::VectorXd pc(2), pr(2), rc(2), rr(2);
    pc << -1.0, -1e30;
    pr << -2.0, -3.0;
    rc << -1.0, 0.0;
    rr << -2.0, -2.0;
    // forward-KL f-DPO: the score −e^{−u} and its derivative e^{−u} overflow at u = −1e30
    pf::DPOOptions o;
    o.f_divergence = pf::FDivergence::ForwardKL;
    RLPO_REQUIRE_NUMERICAL_ERROR(pf::dpo_loss(pc, pr, rc, rr, o),
                                 "preference::dpo_loss(): gradient: entry [0, 1] is not finite");
    // without a gradient the value is still checked
    RLPO_REQUIRE_NUMERICAL_ERROR(pf::dpo_loss(pc, pr, rc, rr, o, rlpo::no_grad<double>()),
                                 "value: the loss is not finite");
    // float: IPO's derivative 2e/|y| fits a double, not a float
    Eigen::VectorXf fc(1), fr(1), gc(1), gr(1);
    fc << -3e38f;
    fr << 0.0f;
    gc << 3e38f;
    gr << 0.0f;
    pf::CompletionLengths len;
    len.chosen = len.rejected = Eigen::VectorXd::Ones(1);
    RLPO_REQUIRE_NUMERICAL_ERROR(
        pf::dpo_loss(fc, fr, gc, gr, pf::DPOOptions::of(pf::DPOLoss::IPO), {}, len), "not finite");
    // ordinary inputs are untouched by the checks
    pc(1) = -5.0;
    const auto ok = pf::dpo_loss(pc, pr, rc, rr, o);
    CHECK(std::isfinite(ok.value));
    CHECK(ok.grad.allFinite());
}

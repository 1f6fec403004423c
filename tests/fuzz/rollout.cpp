// Fuzz target: advantages, returns and reward shaping (rollout/): every estimator of the
// `adv_estimator` table (GAE, GRPO, Dr.GRPO, RLOO, REINFORCE++ and its baseline form, ReMax,
// OPO, GRPO pass@k, pass@k, GDPO) with their options and presets, masked whitening, the DAPO
// overlong penalty and reward combination. Nothing here has a gradient: the outputs must be
// finite (or the call throws), and token outputs 0 where the mask is 0.
#include <rlpo/rollout/advantages.hpp>
#include <rlpo/rollout/returns.hpp>
#include <rlpo/rollout/shaping.hpp>

#include "fuzz_common.hpp"
#include "known_issues.hpp"

namespace {

namespace rr = rlpo::rollout;
using rlpo::Index;
using rlpo::Mat;
using rlpo::Vec;

template <class S>
void check_vec(const char* fn, const Vec<S>& v, Index n) {
    if (v.size() != n) fz::fail(std::string(fn) + ": output of the wrong size");
    for (Index i = 0; i < v.size(); ++i) fz::check_value(fn, "output entry", v(i));
}

template <class S>
void check_tokens(const char* fn, const Mat<S>& a, const Mat<S>& m, const char* what,
                  bool zero_masked = true) {
    fz::check_grad(fn, a, m.rows(), m.cols(), what);
    fz::Sink<S> own;
    if (zero_masked)
        fz::check_masked(
            fn, own, a, [&](Index i, Index t) { return m(i, t) == 0; }, what);
}

rr::GRPOOptions grpo_options(FuzzedDataProvider& f) {
    rr::GRPOOptions o;
    switch (f.ConsumeIntegralInRange<int>(0, 5)) {
        case 0: o = rr::GRPOOptions::verl(f.ConsumeBool()); break;
        case 1:
            o = rr::GRPOOptions::trl(
                static_cast<rr::AdvantageScale>(f.ConsumeIntegralInRange<int>(0, 2)));
            break;
        case 2: o = rr::GRPOOptions::openrlhf(); break;
        case 3: o = rr::GRPOOptions::dler(); break;
        default: break;
    }
    if (f.ConsumeBool()) {
        o.scale = static_cast<rr::AdvantageScale>(f.ConsumeIntegralInRange<int>(0, 2));
        o.std_kind = f.ConsumeBool() ? rr::StdKind::Sample : rr::StdKind::Population;
        o.epsilon = fz::pick(f, {1e-6, 0.0, 1e-300, 1e300, 1e-4});
        o.std_floor = fz::pick(f, {0.0, 1e-300, 1.0, 1e300});
        o.singleton = f.ConsumeBool() ? rr::SingletonGroups::Zero : rr::SingletonGroups::RawScore;
        o.nan_scores =
            f.ConsumeBool() ? rlpo::rollout::NanScores::Throw : rlpo::rollout::NanScores::AsZero;
    }
    fz::trace() << "grpo options: scale " << static_cast<int>(o.scale) << " std "
                << static_cast<int>(o.std_kind) << " eps " << o.epsilon << " floor " << o.std_floor
                << " singleton " << static_cast<int>(o.singleton) << " nan "
                << static_cast<int>(o.nan_scores) << '\n';
    return o;
}

rr::WhitenOptions whiten_options(FuzzedDataProvider& f) {
    rr::WhitenOptions o =
        f.ConsumeBool() ? rr::WhitenOptions::verl() : rr::WhitenOptions::openrlhf();
    if (f.ConsumeBool()) o.epsilon = fz::pick(f, {1e-8, 0.0, 1e-300, 1e300});
    o.shift_mean = f.ConsumeIntegralInRange<int>(0, 3) != 0;
    fz::trace() << "whiten: unbiased " << o.unbiased << " eps " << o.epsilon << " floor "
                << o.eps_as_floor << " shift " << o.shift_mean << '\n';
    return o;
}

template <class S>
void one(FuzzedDataProvider& f) {
    const Index N = f.ConsumeIntegralInRange<Index>(0, 12);
    const Index T = f.ConsumeIntegralInRange<Index>(0, 12);
    const int extra = f.ConsumeIntegralInRange<int>(0, 5);  // 0..2: whiten, overlong, combine
    const char* name = fz::pick_name(f, rr::detail::advantage_estimator_table);
    const rr::AdvantageEstimator est = rr::parse_advantage_estimator(name);
    // groups: equal sizes or random contiguous runs
    std::vector<Index> offsets{0};
    if (f.ConsumeBool() && N > 0) {
        const Index G = f.ConsumeIntegralInRange<Index>(1, N);
        for (Index k = G; k <= N; k += G) offsets.push_back(k);
        if (offsets.back() != N) offsets.push_back(N);
    } else {
        Index at = 0;
        while (at < N) {
            at = std::min(N, at + f.ConsumeIntegralInRange<Index>(1, 5));
            offsets.push_back(at);
        }
    }
    rr::Groups groups;
    try {
        groups = rr::Groups::from_offsets(offsets);
    } catch (const rlpo::invalid_argument&) {
        return;
    }
    fz::trace() << "rollout<" << (sizeof(S) == 4 ? "float" : "double") << "> N " << N << " T " << T
                << " extra " << extra << " estimator " << name << " offsets";
    for (Index o : offsets) fz::trace() << ' ' << o;
    fz::trace() << '\n';
    Mat<S> sm = fz::matrix<S>(f, N, 1, fz::Dom::Real);
    if (f.ConsumeIntegralInRange<int>(0, 2) == 0)  // binary rewards
        for (Index i = 0; i < N; ++i) sm(i, 0) = static_cast<S>(f.ConsumeBool() ? 1 : 0);
    const Vec<S> s = sm.col(0);
    Mat<S> m = fz::mask<S>(f, N, T);
    Mat<S> r = fz::matrix<S>(f, N, T, fz::Dom::Real);
    Mat<S> v = fz::matrix<S>(f, N, T, fz::Dom::Real);
    fz::poison_tokens(f, r, m, false, "token_rewards");
    fz::poison_tokens(f, v, m, false, "values");
    fz::dump("scores", sm);
    fz::dump("mask", m);
    fz::dump("token_rewards", r);
    fz::dump("values", v);
    const auto on = [&](Index i, Index t) { return m(i, t) != 0; };
    const bool bad_tokens_r = fz::any_nonfinite(r, on), bad_tokens_v = fz::any_nonfinite(v, on);
    if (fz::known::rollout(est, s, m, r, v)) return;
    if (extra == 0) {
        const rr::WhitenOptions o = whiten_options(f);
        if (bad_tokens_r) fz::require_throw("non-finite x under the mask");
        fz::run("whiten", [&] { check_tokens("whiten", rr::whiten(r, m, o), m, "whitened"); });
        return;
    }
    if (extra == 1) {
        rr::OverlongOptions o = rr::OverlongOptions::dapo(fz::pick(f, {4096.0, 1.0, 1e300}),
                                                          fz::pick(f, {512.0, 1.0, 1e-300}));
        o.penalty_factor = fz::pick(f, {1.0, 0.0, 1e300});
        o.clip_beyond_max = f.ConsumeBool();
        Mat<S> len = fz::matrix<S>(f, N, 1, fz::Dom::Positive, false);
        fz::dump("lengths", len);
        fz::run("overlong_penalty",
                [&] { check_vec("overlong_penalty", rr::overlong_penalty(len.col(0), o), N); });
        return;
    }
    if (extra == 2) {
        const Index K = f.ConsumeIntegralInRange<Index>(0, 4);
        Mat<S> R = fz::matrix<S>(f, N, K, fz::Dom::Real);
        std::vector<double> w;
        if (f.ConsumeBool())
            for (Index k = 0; k < K; ++k) w.push_back(fz::pick(f, {1.0, -1.0, 0.0, 1e300}));
        const auto nan = f.ConsumeBool() ? rr::NanScores::Throw : rr::NanScores::AsZero;
        fz::dump("rewards", R);
        fz::trace() << "weights";
        for (double x : w) fz::trace() << ' ' << x;
        fz::trace() << " nan " << static_cast<int>(nan) << '\n';
        fz::note_nonfinite(R);
        if (fz::known::combine_rewards(R, w)) return;
        fz::run("combine_rewards",
                [&] { check_vec("combine_rewards", rr::combine_rewards(R, w, nan), N); });
        return;
    }
    fz::note_nonfinite(sm);
    switch (est) {
        case rr::AdvantageEstimator::GRPO:
        case rr::AdvantageEstimator::DrGRPO: {
            rr::GRPOOptions o = grpo_options(f);
            if (est == rr::AdvantageEstimator::DrGRPO) o.scale = rr::AdvantageScale::None;
            fz::run("grpo_advantages", [&] {
                const Vec<S> a = rr::grpo_advantages(s, groups, o);
                check_vec("grpo_advantages", a, N);
                check_tokens("broadcast_to_tokens", rr::broadcast_to_tokens(a, m), m, "A");
            });
            break;
        }
        case rr::AdvantageEstimator::RLOO: {
            rr::RLOOOptions o = f.ConsumeBool() ? rr::RLOOOptions::verl() : rr::RLOOOptions::trl();
            fz::run("rloo_advantages",
                    [&] { check_vec("rloo_advantages", rr::rloo_advantages(s, groups, o), N); });
            break;
        }
        case rr::AdvantageEstimator::OPO: {
            rr::OPOOptions o = f.ConsumeBool() ? rr::OPOOptions::verl() : rr::OPOOptions{};
            fz::run("opo_advantages", [&] {
                const Vec<S> len = rr::lengths_from_mask(m);
                check_vec("lengths_from_mask", len, N);
                check_vec("opo_advantages", rr::opo_advantages(s, len, groups, o), N);
            });
            break;
        }
        case rr::AdvantageEstimator::GRPOPassK: {
            rr::GRPOPassKOptions o;
            o.norm_by_std = f.ConsumeBool();
            o.epsilon = fz::pick(f, {1e-6, 0.0, 1e-300, 1e300});
            o.std_kind = f.ConsumeBool() ? rr::StdKind::Sample : rr::StdKind::Population;
            fz::run("grpo_passk_advantages", [&] {
                check_vec("grpo_passk_advantages", rr::grpo_passk_advantages(s, groups, o), N);
            });
            break;
        }
        case rr::AdvantageEstimator::PassK: {
            const Index k = f.ConsumeIntegralInRange<Index>(1, 6);
            fz::run("passk_advantages",
                    [&] { check_vec("passk_advantages", rr::passk_advantages(s, groups, k), N); });
            break;
        }
        case rr::AdvantageEstimator::GDPO: {
            rr::GDPOOptions o = f.ConsumeBool() ? rr::GDPOOptions::trl() : rr::GDPOOptions{};
            const Index K = f.ConsumeIntegralInRange<Index>(1, 3);
            Mat<S> R = fz::matrix<S>(f, N, K, fz::Dom::Real);
            if (f.ConsumeBool())
                for (Index k = 0; k < K; ++k)
                    o.weights.push_back(fz::pick(f, {1.0, 0.5, -2.0, 0.0, 1e300}));
            o.batch_normalize = f.ConsumeIntegralInRange<int>(0, 3) != 0;
            o.batch_epsilon = fz::pick(f, {1e-6, 0.0, 1e-300, 1e300});
            fz::dump("gdpo_rewards", R);
            fz::note_nonfinite(R);
            fz::run("gdpo_advantages",
                    [&] { check_vec("gdpo_advantages", rr::gdpo_advantages(R, groups, o), N); });
            break;
        }
        case rr::AdvantageEstimator::ReinforcePP: {
            rr::ReinforcePPOptions o;
            o.gamma = fz::pick(f, {1.0, 0.99, 0.0, 1e-300});
            o.whiten = f.ConsumeIntegralInRange<int>(0, 3) != 0;
            o.whitening = whiten_options(f);
            if (bad_tokens_r) fz::require_throw("non-finite token reward under the mask");
            fz::run("reinforce_pp_advantages", [&] {
                const auto a = rr::reinforce_pp_advantages(r, m, o);
                check_tokens("reinforce_pp_advantages", a.advantages, m, "advantages");
                check_tokens("reinforce_pp_advantages", a.returns, m, "returns");
            });
            break;
        }
        case rr::AdvantageEstimator::ReinforcePPBaseline: {
            rr::ReinforcePPBaselineOptions o = f.ConsumeBool()
                                                   ? rr::ReinforcePPBaselineOptions::verl()
                                                   : rr::ReinforcePPBaselineOptions{};
            o.whitening = whiten_options(f);
            fz::run("reinforce_pp_baseline_advantages", [&] {
                check_tokens("reinforce_pp_baseline_advantages",
                             rr::reinforce_pp_baseline_advantages(s, groups, m, o), m,
                             "advantages");
            });
            break;
        }
        case rr::AdvantageEstimator::GAE: {
            rr::GAEOptions o =
                f.ConsumeBool() ? rr::GAEOptions::openrlhf() : rr::GAEOptions::verl();
            o.gamma = fz::pick(f, {o.gamma, 0.99, 0.0, 1e-300, 1.0});
            o.lambda = fz::pick(f, {o.lambda, 0.95, 0.0, 1.0});
            o.whiten = f.ConsumeIntegralInRange<int>(0, 3) != 0;
            o.whitening = whiten_options(f);
            // token rewards [B, T], or one outcome reward per row [B, 1] (read where the row
            // has an unmasked token)
            const bool outcome = f.ConsumeBool();
            bool bad = bad_tokens_v || (!outcome && bad_tokens_r);
            for (Index i = 0; outcome && i < N; ++i)
                if (!std::isfinite(static_cast<double>(s(i))) && (m.row(i).array() != 0).any())
                    bad = true;
            if (bad) fz::require_throw("non-finite reward or value under the mask");
            fz::run("gae_advantages", [&] {
                const auto a =
                    outcome ? rr::gae_advantages(s, v, m, o) : rr::gae_advantages(r, v, m, o);
                check_tokens("gae_advantages", a.advantages, m, "advantages");
                check_tokens("gae_advantages", a.returns, m, "returns");
            });
            break;
        }
        case rr::AdvantageEstimator::ReMax: {
            if (bad_tokens_r) fz::require_throw("non-finite token reward under the mask");
            fz::run("remax_advantages", [&] {
                const auto a = rr::remax_advantages(r, s, m);
                check_tokens("remax_advantages", a.advantages, m, "advantages");
                check_tokens("remax_advantages", a.returns, m, "returns");
            });
            break;
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider f(data, size);
    fz::begin_case();
    if (f.ConsumeBool())
        one<float>(f);
    else
        one<double>(f);
    return 0;
}

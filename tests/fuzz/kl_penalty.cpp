// Fuzz target: penalties::kl_penalty, kl_penalty_corrected (every estimator of the parser's
// table, clamps from verl's to none) with per-token values, and kl_in_reward.
#include <rlpo/penalties/kl_estimators.hpp>

#include "fuzz_common.hpp"
#include "known_issues.hpp"

namespace {

namespace rk = rlpo::penalties;
using rlpo::Index;
using rlpo::Mat;

template <class S>
void one(FuzzedDataProvider& f) {
    const double inf = std::numeric_limits<double>::infinity();
    const Index B = f.ConsumeIntegralInRange<Index>(0, 6);
    const Index T = f.ConsumeIntegralInRange<Index>(0, 12);
    const int entry = f.ConsumeIntegralInRange<int>(0, 2);
    const char* name = fz::pick_name(f, rk::detail::kl_estimator_table);
    rk::KLOptions o = f.ConsumeBool() ? rk::KLOptions::verl() : rk::KLOptions::trl();
    o.estimator = rk::parse_kl_estimator(name);
    if (f.ConsumeBool()) {
        o.log_ratio_clamp = fz::pick(f, {20.0, inf, 1e-6, 700.0, 1e6});
        o.value_clamp = fz::pick(f, {10.0, inf, 1e-6, 1e300});
    }
    fz::trace() << "kl<" << (sizeof(S) == 4 ? "float" : "double") << "> entry " << entry << " B "
                << B << " T " << T << " estimator " << name << " L " << o.log_ratio_clamp
                << " vmax " << o.value_clamp << '\n';
    const rlpo::Normalizer norm = fz::normalizer(f);
    Mat<S> m = fz::mask<S>(f, B, T);
    Mat<S> lp = fz::matrix<S>(f, B, T, fz::Dom::LogProb);
    Mat<S> ref = fz::matrix<S>(f, B, T, fz::Dom::LogProb);
    Mat<S> old = f.ConsumeBool() ? lp : fz::matrix<S>(f, B, T, fz::Dom::LogProb);
    Mat<S> scores = fz::matrix<S>(f, B, T, fz::Dom::Real);
    if (entry == 2) {  // kl_in_reward: scores, old_logp, ref_logp are read
        fz::poison_tokens(f, scores, m, true, "scores");
        fz::poison_tokens(f, old, m, true, "old_logp");
        fz::poison_tokens(f, ref, m, true, "ref_logp");
    } else {
        fz::poison_tokens(f, lp, m, true, "logp");
        fz::poison_tokens(f, ref, m, true, "ref_logp");
        fz::poison_tokens(f, old, m, entry == 1, "old_logp");
    }
    fz::Sink<S> sink, values;
    sink.decode(f, B, T);
    values.decode(f, B, T);
    if (values.mode == rlpo::GradMode::Own) values.mode = rlpo::GradMode::None;
    const double beta = fz::pick(f, {0.001, 0.0, 1.0, 1e30, 1e-300});
    fz::dump("mask", m);
    fz::dump(entry == 2 ? "scores" : "logp", entry == 2 ? scores : lp);
    fz::dump("ref_logp", ref);
    fz::dump("old_logp", old);
    if (fz::known::kl(entry, o, lp, ref, old, m, norm)) return;
    const auto masked = [&](Index i, Index t) { return m(i, t) == 0; };
    const auto check_values = [&](const char* fn) {
        if (values.mode == rlpo::GradMode::None) return;
        fz::check_grad(fn, values.buf, B, T, "token_values");
        fz::check_masked(fn, values, values.buf, masked, "token_values");
    };
    if (entry == 0) {
        fz::run("kl_penalty", [&] {
            const auto r = rk::kl_penalty(lp, ref, m, o, norm, sink.out(), values.out());
            fz::check_result("kl_penalty", r, sink, B, T, masked);
            check_values("kl_penalty");
        });
    } else if (entry == 1) {
        fz::run("kl_penalty_corrected", [&] {
            const auto r =
                rk::kl_penalty_corrected(lp, old, ref, m, o, norm, sink.out(), values.out());
            fz::check_result("kl_penalty_corrected", r, sink, B, T, masked);
            check_values("kl_penalty_corrected");
        });
    } else {
        fz::trace() << "beta " << beta << '\n';
        fz::run("kl_in_reward", [&] {
            const auto r = rk::kl_in_reward(scores, old, ref, m, beta, o);
            const char* fn = "kl_in_reward";
            fz::check_metrics(fn, r.metrics);
            fz::Sink<S> own;
            fz::check_grad(fn, r.rewards, B, T, "rewards");
            fz::check_masked(fn, own, r.rewards, masked, "rewards");
            fz::check_grad(fn, r.kl, B, T, "kl");
            fz::check_masked(fn, own, r.kl, masked, "kl");
            for (Index i = 0; i < r.seq_kl.size(); ++i) fz::check_value(fn, "seq_kl", r.seq_kl(i));
        });
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

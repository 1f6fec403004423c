// Fuzz target: policy::policy_loss over every name of the parser's table, every anchor and
// importance-sampling level, the chosen variant's options (extreme but valid values), the
// normalizer, optional IS weights and every gradient destination.
#include <rlpo/policy/policy_loss.hpp>

#include "fuzz_common.hpp"
#include "known_issues.hpp"

namespace {

namespace rp = rlpo::policy;
using rlpo::Index;
using rlpo::Mat;

std::optional<rlpo::Aggregation> forced(FuzzedDataProvider& f,
                                        std::optional<rlpo::Aggregation> dflt) {
    const int k = f.ConsumeIntegralInRange<int>(0, 6);
    if (k == 0) return std::nullopt;
    if (k == 1) return dflt;
    return static_cast<rlpo::Aggregation>(k - 2);
}

void tweak(FuzzedDataProvider& f, rp::PolicyLossOptions& o) {
    const double inf = std::numeric_limits<double>::infinity();
    switch (o.loss) {
        case rp::PolicyLoss::Vanilla:
            o.vanilla.clip_low = fz::pick(f, {0.2, 1e-8, 0.999, 0.5});
            o.vanilla.clip_high = fz::pick(f, {0.2, 0.28, 1e-8, 10.0, 1e6});
            if (f.ConsumeBool()) o.vanilla.dual_clip = fz::pick(f, {3.0, 1.0 + 1e-9, 1e6});
            o.vanilla.log_ratio_clamp = fz::pick(f, {20.0, inf, 1e-6, 700.0, 1e6});
            if (f.ConsumeBool())
                o.vanilla.two_sided_delta =
                    o.vanilla.clip_high + fz::pick(f, {3.0, 1.0 + 1e-9, 1e6});
            break;
        case rp::PolicyLoss::GPG: break;
        case rp::PolicyLoss::GSPO:
            o.gspo.clip_low = fz::pick(f, {3e-4, 1e-8, 0.2, 10.0});
            o.gspo.clip_high = fz::pick(f, {4e-4, 1e-8, 0.2, 10.0});
            o.gspo.level = f.ConsumeBool() ? rp::GSPOLevel::Token : rp::GSPOLevel::Sequence;
            o.gspo.log_ratio_cap = fz::pick(f, {10.0, inf, 1e-8, 700.0});
            o.gspo.aggregation = forced(f, o.gspo.aggregation);
            break;
        case rp::PolicyLoss::CISPO:
            o.cispo.bound = f.ConsumeBool() ? rp::CISPOBound::Clip : rp::CISPOBound::Cap;
            o.cispo.clip_low = fz::pick(f, {0.2, 1.0, 5.0, 1e-8});
            o.cispo.clip_high = fz::pick(f, {0.2, 1e-8, 10.0});
            o.cispo.cap = fz::pick(f, {5.0, 1e-8, 1e6});
            o.cispo.log_ratio_clamp = fz::pick(f, {20.0, inf, 1e-6, 700.0});
            break;
        case rp::PolicyLoss::SAPO:
            o.sapo.tau_pos = fz::pick(f, {1.0, 1e-8, 1e3});
            o.sapo.tau_neg = fz::pick(f, {1.05, 1e-8, 1e3});
            o.sapo.log_ratio_clamp = fz::pick(f, {20.0, inf, 1e-6, 700.0});
            o.sapo.aggregation = forced(f, o.sapo.aggregation);
            break;
        case rp::PolicyLoss::GeoMean:
            o.geo_mean.clip_low = fz::pick(f, {0.4, 0.2, 1e-8, 50.0, 800.0});
            o.geo_mean.clip_high = fz::pick(f, {0.4, 0.2, 1e-8, 50.0, 800.0});
            o.geo_mean.aggregation = forced(f, o.geo_mean.aggregation);
            break;
        case rp::PolicyLoss::ClipCov:
            o.clip_cov.clip_low = fz::pick(f, {0.2, 1e-8, 0.999});
            o.clip_cov.clip_high = fz::pick(f, {0.2, 1e-8, 10.0});
            o.clip_cov.ratio = fz::pick(f, {2e-4, 1.0, 0.5});
            o.clip_cov.cov_lb = fz::pick(f, {1.0, -1e30, 0.0});
            o.clip_cov.cov_ub = fz::pick(f, {5.0, 1e30, 1e-3});
            o.clip_cov.seed = f.ConsumeIntegral<std::uint64_t>();
            break;
        case rp::PolicyLoss::KLCov:
            o.kl_cov.ratio = fz::pick(f, {2e-4, 1.0, 0.5});
            o.kl_cov.kl_coef = fz::pick(f, {1.0, 0.0, 1e30});
            break;
        case rp::PolicyLoss::DPPOTV:
        case rp::PolicyLoss::DPPOKL: {
            auto& d = o.loss == rp::PolicyLoss::DPPOTV ? o.dppo_tv : o.dppo_kl;
            d.delta_low = fz::pick(f, {0.15, 1e-8, 0.99, 0.05});
            d.delta_high = fz::pick(f, {0.15, 1e-8, 0.99, 0.05});
            d.ratio_cap = fz::pick(f, {20.0, 1.0, 1e6});
            d.log_ratio_clamp = fz::pick(f, {20.0, inf, 1e-6, 700.0});
            break;
        }
        case rp::PolicyLoss::DRO: o.dro.beta = fz::pick(f, {0.1, 0.0, 1e6, 1e-300}); break;
        case rp::PolicyLoss::LUSPO:
            o.luspo.clip_low = fz::pick(f, {2e-3, 1e-8, 0.2, 10.0});
            o.luspo.clip_high = fz::pick(f, {2.5e-3, 1e-8, 0.2, 10.0});
            o.luspo.aggregation = forced(f, o.luspo.aggregation);
            break;
        case rp::PolicyLoss::VESPO:
            o.vespo.k_pos = fz::pick(f, {2.0, 0.0, 1e3, 1e-8});
            o.vespo.lambda_pos = fz::pick(f, {3.0, 0.0, 1e3, 1e-8});
            o.vespo.k_neg = fz::pick(f, {3.0, 0.0, 1e3, 1e-8});
            o.vespo.lambda_neg = fz::pick(f, {2.0, 0.0, 1e3, 1e-8});
            break;
    }
}

template <class S>
void one(FuzzedDataProvider& f) {
    const Index B = f.ConsumeIntegralInRange<Index>(0, 6);
    const Index T = f.ConsumeIntegralInRange<Index>(0, 12);
    const char* name = fz::pick_name(f, rp::detail::policy_loss_table());
    const auto anchor = static_cast<rp::Anchor>(f.ConsumeIntegralInRange<int>(0, 2));
    const auto level = f.ConsumeIntegralInRange<int>(0, 3) == 0 ? rp::ImportanceSampling::Sequence
                                                                : rp::ImportanceSampling::Token;
    const bool do_tweak = f.ConsumeBool();
    fz::trace() << "policy_loss<" << (sizeof(S) == 4 ? "float" : "double") << "> B " << B << " T "
                << T << " name " << name << " anchor " << static_cast<int>(anchor) << " level "
                << static_cast<int>(level) << " tweak " << do_tweak << '\n';
    rp::PolicyLossOptions opts;
    try {
        opts = rp::make_policy_loss(name, anchor, level);
    } catch (const rlpo::invalid_argument&) {
        return;  // documented: sequence level for most names
    }
    if (do_tweak) tweak(f, opts);
    const rlpo::Normalizer norm = fz::normalizer(f);
    Mat<S> m = fz::mask<S>(f, B, T);
    Mat<S> lp = fz::matrix<S>(f, B, T, fz::Dom::LogProb);
    Mat<S> old =
        f.ConsumeIntegralInRange<int>(0, 3) == 0 ? lp : fz::matrix<S>(f, B, T, fz::Dom::LogProb);
    Mat<S> adv = fz::matrix<S>(f, B, T, fz::Dom::Real);
    const bool reads_old = opts.loss != rp::PolicyLoss::GPG;
    fz::poison_tokens(f, lp, m, true, "logp");
    fz::poison_tokens(f, old, m, reads_old, "old_logp");
    fz::poison_tokens(f, adv, m, true, "advantages");
    rp::TokenWeights<S> w;
    Mat<S> wm;
    if (f.ConsumeIntegralInRange<int>(0, 3) == 0) {
        wm = fz::matrix<S>(f, B, T, fz::Dom::Positive);
        fz::poison_tokens(f, wm, m, true, "is_weights");
        fz::dump("is_weights", wm);
        w.emplace(wm);
    }
    fz::Sink<S> sink;
    sink.decode(f, B, T);
    fz::dump("mask", m);
    fz::dump("logp", lp);
    fz::dump("old_logp", old);
    fz::dump("advantages", adv);
    if (const char* skip = fz::known::policy_loss(opts, lp, old, adv, m, norm, w)) {
        (void)skip;
        return;
    }
    fz::run("policy_loss", [&] {
        const auto r = rp::policy_loss(opts, lp, old, adv, m, norm, sink.out(), w);
        fz::check_result("policy_loss", r, sink, B, T,
                         [&](Index i, Index t) { return m(i, t) == 0; });
    });
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

// Fuzz target: the preference losses (preference/): the DPO family (every loss type of the
// parser's table, combined with weights, f-DPO scores, lengths, pair weights, global counts),
// KTO / BCO (unpaired), CPO / SimPO / AlphaPO, ORPO, RPO, INPO, HyPO and NeMo's reward-aware
// losses. Inputs are per-sequence log-probs: NaN and ±inf are documented errors.
#include <rlpo/preference/bco.hpp>
#include <rlpo/preference/cpo.hpp>
#include <rlpo/preference/dpo.hpp>
#include <rlpo/preference/hypo.hpp>
#include <rlpo/preference/inpo.hpp>
#include <rlpo/preference/kto.hpp>
#include <rlpo/preference/orpo.hpp>
#include <rlpo/preference/reward_aware.hpp>
#include <rlpo/preference/rpo.hpp>

#include "fuzz_common.hpp"
#include "known_issues.hpp"

namespace {

namespace pr = rlpo::preference;
using rlpo::Index;
using rlpo::Mat;

/// A [n] vector of summed log-probs (as a column matrix), with extremes.
template <class S>
Mat<S> seq(FuzzedDataProvider& f, Index n, const char* name, fz::Dom d = fz::Dom::LogProb) {
    Mat<S> x = fz::matrix<S>(f, n, 1, d);
    if (f.ConsumeIntegralInRange<int>(0, 31) == 0 && n > 0)
        x(f.ConsumeIntegralInRange<Index>(0, n - 1), 0) =
            static_cast<S>(std::numeric_limits<double>::quiet_NaN());
    fz::dump(name, x);
    if (fz::any_nonfinite(x, [](Index, Index) { return true; }))
        fz::require_throw(std::string("non-finite entry in ") + name);
    return x;
}

std::optional<pr::CompletionLengths> lengths(FuzzedDataProvider& f, Index B) {
    if (f.ConsumeIntegralInRange<int>(0, 3) == 0) return std::nullopt;
    pr::CompletionLengths l;
    l.chosen.resize(B);
    l.rejected.resize(B);
    for (Index i = 0; i < B; ++i) {
        l.chosen(i) = fz::pick(f, {1.0, 0.0, 7.0, 100.0, 1e300, 0.5});
        l.rejected(i) = fz::pick(f, {1.0, 0.0, 7.0, 100.0, 1e300, 0.5});
    }
    fz::trace() << "lengths: " << l.chosen.transpose() << " / " << l.rejected.transpose() << '\n';
    return l;
}

std::optional<double> count(FuzzedDataProvider& f) {
    const int k = f.ConsumeIntegralInRange<int>(0, 7);
    if (k < 4) return std::nullopt;
    static const double v[] = {1.0, 1e-300, 1e300, 3.0};
    fz::trace() << "count " << v[k - 4] << '\n';
    return v[k - 4];
}

pr::DPOOptions dpo_options(FuzzedDataProvider& f) {
    std::vector<std::string> types;
    std::vector<double> weights;
    const int n = f.ConsumeIntegralInRange<int>(1, 3);
    const bool w = f.ConsumeBool();
    for (int k = 0; k < n; ++k) {
        types.push_back(fz::pick_name(f, pr::detail::dpo_loss_table()));
        if (w) weights.push_back(fz::pick(f, {1.0, 0.5, 0.0, -1.0, 1e300}));
    }
    pr::DPOOptions o = pr::make_dpo_options(
        types, weights, f.ConsumeBool() ? pr::DPOOptions::trl() : pr::DPOOptions{});
    o.beta = fz::pick(f, {0.1, 1e-300, 1e-8, 1.0, 1e8, 1e300});
    o.label_smoothing = fz::pick(f, {0.0, 0.1, 0.49, 0.5, 1e-300});
    o.discopop_tau = fz::pick(f, {0.05, 1e-300, 1e300});
    o.bco_delta = fz::pick(f, {0.0, 1.0, -1e300});
    o.f_divergence = pr::parse_f_divergence(fz::pick_name(f, pr::detail::f_divergence_table));
    o.f_alpha = fz::pick(f, {0.5, 1.0, 0.0, 1e-7, 1e300, -3.0});
    o.num_pairs = count(f);
    o.num_sft_tokens = count(f);
    fz::trace() << "dpo:";
    for (const auto& t : types) fz::trace() << ' ' << t;
    fz::trace() << " weights " << weights.size() << " beta " << o.beta << " eps "
                << o.label_smoothing << " tau " << o.discopop_tau << " delta " << o.bco_delta
                << " f " << static_cast<int>(o.f_divergence) << " f_alpha " << o.f_alpha
                << " pairs " << o.num_pairs.value_or(-1) << " sft_tokens "
                << o.num_sft_tokens.value_or(-1) << '\n';
    return o;
}

template <class S>
void check(const char* fn, const rlpo::Result<S>& r, fz::Sink<S>& sink) {
    fz::check_value(fn, "value", r.value);
    fz::check_metrics(fn, r.metrics);
    if (const Mat<S>* g = sink.grad(r)) fz::check_grad(fn, *g, g->rows(), g->cols(), "grad");
}

template <class S>
void one(FuzzedDataProvider& f) {
    const int entry = f.ConsumeIntegralInRange<int>(0, 8);
    const Index B = f.ConsumeIntegralInRange<Index>(0, 6);
    static const char* names[] = {"dpo_loss",  "kto_loss",  "bco_loss",
                                  "cpo_loss",  "orpo_loss", "rpo_loss",
                                  "inpo_loss", "hypo_loss", "reward_aware_po_loss"};
    const char* fn = names[entry];
    fz::trace() << fn << "<" << (sizeof(S) == 4 ? "float" : "double") << "> B " << B << '\n';
    fz::Sink<S> sink;
    if (entry == 1 || entry == 2) {  // unpaired: n_c chosen, n_r rejected examples
        const Index nr = f.ConsumeIntegralInRange<Index>(0, 6);
        const Mat<S> pc = seq<S>(f, B, "policy_chosen"), pr_ = seq<S>(f, nr, "policy_rejected");
        const Mat<S> rc = seq<S>(f, B, "ref_chosen"), rr = seq<S>(f, nr, "ref_rejected");
        sink.decode(f, 1, B + nr);
        if (fz::known::preference(entry, pc, pr_)) return;
        if (entry == 1) {
            pr::KTOOptions o;
            o.loss = pr::parse_kto_loss(fz::pick_name(f, pr::detail::kto_loss_table));
            o.beta = fz::pick(f, {0.1, 1e-300, 1e8, 1e300});
            o.desirable_weight = fz::pick(f, {1.0, 0.0, 1e300, 1.33});
            o.undesirable_weight = fz::pick(f, {1.0, 0.0, 1e300});
            o.num_examples = count(f);
            pr::KLBaseline kl;
            const int k = f.ConsumeIntegralInRange<int>(0, 2);
            if (k == 1) kl = pr::KLBaseline::given(fz::pick(f, {0.0, 1.0, -5.0, 1e300}));
            if (k == 2) {
                const Index n = f.ConsumeIntegralInRange<Index>(1, 4);
                const Mat<S> a = seq<S>(f, n, "kl_policy"), b = seq<S>(f, n, "kl_ref");
                kl = pr::KLBaseline::from_logps(a.col(0).template cast<double>(),
                                                b.col(0).template cast<double>());
            }
            fz::trace() << "kto loss " << static_cast<int>(o.loss) << " beta " << o.beta << " wd "
                        << o.desirable_weight << " wu " << o.undesirable_weight << " baseline " << k
                        << '\n';
            fz::run(fn, [&] { check(fn, pr::kto_loss(pc, pr_, rc, rr, kl, o, sink.out()), sink); });
        } else {
            pr::BCOOptions o;
            o.beta = fz::pick(f, {0.1, 1e-300, 1e8, 1e300});
            o.delta = fz::pick(f, {0.0, 1.0, -1e300});
            o.num_examples = count(f);
            pr::ExampleWeights w;
            if (f.ConsumeBool()) {
                w.rejected = Eigen::VectorXd(nr);
                for (Index i = 0; i < nr; ++i)
                    (*w.rejected)(i) = fz::pick(f, {1.0, 0.0, 1e300, 0.5});
            }
            fz::trace() << "bco beta " << o.beta << " delta " << o.delta << '\n';
            fz::run(fn, [&] { check(fn, pr::bco_loss(pc, pr_, rc, rr, o, sink.out(), w), sink); });
        }
        return;
    }
    const Mat<S> pc = seq<S>(f, B, "policy_chosen"), pr_ = seq<S>(f, B, "policy_rejected");
    sink.decode(f, 2, B);
    if (fz::known::preference(entry, pc, pr_)) return;
    switch (entry) {
        case 0: {
            const Mat<S> rc = seq<S>(f, B, "ref_chosen"), rr = seq<S>(f, B, "ref_rejected");
            pr::DPOOptions o = dpo_options(f);
            const auto len = lengths(f, B);
            std::optional<Eigen::VectorXd> pw;
            if (f.ConsumeIntegralInRange<int>(0, 3) == 0) {
                pw = Eigen::VectorXd(B);
                for (Index i = 0; i < B; ++i) (*pw)(i) = fz::pick(f, {1.0, 0.0, 0.3, 1e300});
            }
            fz::run(fn, [&] {
                check(fn, pr::dpo_loss(pc, pr_, rc, rr, o, sink.out(), len, pw), sink);
            });
            break;
        }
        case 3: {
            const char* t = f.ConsumeIntegralInRange<int>(0, 4) == 0
                                ? "alphapo"
                                : fz::pick_name(f, pr::detail::cpo_loss_table());
            pr::CPOOptions o = pr::make_cpo_options(t);
            o.beta = fz::pick(f, {0.1, 1e-300, 1e8, 1e300});
            o.label_smoothing = fz::pick(f, {0.0, 0.1, 0.5});
            o.cpo_alpha = fz::pick(f, {1.0, 0.0, 1e300, -1.0});
            o.simpo_gamma = fz::pick(f, {0.5, 0.0, 1e300, -1e300});
            o.alpha = fz::pick(f, {0.0, 0.25, -1.0, 1e-300, 1e3});
            o.num_pairs = count(f);
            o.num_nll_tokens = count(f);
            const auto len = lengths(f, B);
            fz::trace() << "cpo " << t << " beta " << o.beta << " eps " << o.label_smoothing
                        << " lambda " << o.cpo_alpha << " gamma " << o.simpo_gamma << " alpha "
                        << o.alpha << '\n';
            if (fz::known::alphapo<S>(o.alpha)) return;
            fz::run(fn, [&] { check(fn, pr::cpo_loss(pc, pr_, o, sink.out(), len), sink); });
            break;
        }
        case 4: {
            pr::ORPOOptions o;
            o.beta = fz::pick(f, {0.1, 1e-300, 1e8, 1e300});
            o.compute_nll = f.ConsumeBool();
            o.num_pairs = count(f);
            o.num_nll_tokens = count(f);
            auto len = lengths(f, B);
            if (B > 0 && fz::known::orpo_lengths(len)) return;
            if (!len) {
                len = pr::CompletionLengths{Eigen::VectorXd::Ones(B), Eigen::VectorXd::Ones(B)};
            }
            fz::trace() << "orpo beta " << o.beta << " nll " << o.compute_nll << '\n';
            fz::run(fn, [&] { check(fn, pr::orpo_loss(pc, pr_, *len, o, sink.out()), sink); });
            break;
        }
        case 5: {
            const Mat<S> rc = seq<S>(f, B, "ref_chosen"), rr = seq<S>(f, B, "ref_rejected");
            pr::RPOOptions o =
                f.ConsumeBool() ? pr::RPOOptions::paper() : pr::RPOOptions::zephyr_gemma();
            if (f.ConsumeBool()) o.dpo = dpo_options(f);
            o.eta = fz::pick(f, {0.005, 0.0, 1.0, 1e300});
            const auto len = lengths(f, B);
            fz::trace() << "rpo eta " << o.eta << '\n';
            fz::run(fn,
                    [&] { check(fn, pr::rpo_loss(pc, pr_, rc, rr, o, sink.out(), len), sink); });
            break;
        }
        case 6: {
            const Mat<S> rc = seq<S>(f, B, "ref_chosen"), rr = seq<S>(f, B, "ref_rejected");
            const Mat<S> qc = seq<S>(f, B, "prev_chosen"), qr = seq<S>(f, B, "prev_rejected");
            pr::INPOOptions o =
                f.ConsumeBool() ? pr::INPOOptions::paper() : pr::INPOOptions::mnpo();
            o.eta = fz::pick(f, {0.0075, 1e-300, 1.0, 1e300});
            if (f.ConsumeBool()) o.tau = o.eta * fz::pick(f, {0.5, 1e-300, 0.999999});
            o.num_pairs = count(f);
            fz::trace() << "inpo eta " << o.eta << " tau " << o.tau_value() << '\n';
            fz::run(fn, [&] {
                check(fn, pr::inpo_loss(pc, pr_, rc, rr, qc, qr, o, sink.out()), sink);
            });
            break;
        }
        case 7: {
            const Mat<S> rc = seq<S>(f, B, "ref_chosen"), rr = seq<S>(f, B, "ref_rejected");
            const Index P = f.ConsumeIntegralInRange<Index>(0, 3),
                        k = f.ConsumeIntegralInRange<Index>(2, 4);
            Mat<S> on = fz::matrix<S>(f, P, k, fz::Dom::LogProb);
            Mat<S> onr = fz::matrix<S>(f, P, k, fz::Dom::LogProb);
            fz::dump("online", on);
            fz::dump("online_ref", onr);
            if (fz::any_nonfinite(on, [](Index, Index) { return true; }) ||
                fz::any_nonfinite(onr, [](Index, Index) { return true; }))
                fz::require_throw("non-finite online log-prob");
            pr::HyPOOptions o;
            if (f.ConsumeBool()) o.dpo = dpo_options(f);
            o.lambda = fz::pick(f, {0.1, 0.0, 1.0, 1e300});
            o.num_prompts = count(f);
            const auto len = lengths(f, B);
            fz::Sink<S> sink2;
            sink2.decode(f, P, k);
            fz::trace() << "hypo lambda " << *o.lambda << '\n';
            fz::run(fn, [&] {
                const auto r =
                    pr::hypo_loss(pc, pr_, rc, rr, on, onr, o, sink.out(), sink2.out(), len);
                fz::check_value(fn, "value", r.value);
                fz::check_metrics(fn, r.metrics);
                if (sink.mode == rlpo::GradMode::Own)
                    fz::check_grad(fn, r.grad_pairs, r.grad_pairs.rows(), r.grad_pairs.cols(),
                                   "grad_pairs");
                if (sink2.mode == rlpo::GradMode::Own)
                    fz::check_grad(fn, r.grad_online, r.grad_online.rows(), r.grad_online.cols(),
                                   "grad_online");
                if (sink.mode == rlpo::GradMode::Write || sink.mode == rlpo::GradMode::Add)
                    fz::check_grad(fn, sink.buf, 2, B, "grad_pairs");
                if (sink2.mode == rlpo::GradMode::Write || sink2.mode == rlpo::GradMode::Add)
                    fz::check_grad(fn, sink2.buf, P, k, "grad_online");
            });
            break;
        }
        default: {
            const Mat<S> rc = seq<S>(f, B, "ref_chosen"), rr = seq<S>(f, B, "ref_rejected");
            const Mat<S> wc = seq<S>(f, B, "chosen_rewards", fz::Dom::Real);
            const Mat<S> wr = seq<S>(f, B, "rejected_rewards", fz::Dom::Real);
            pr::RewardAwareOptions o = pr::RewardAwareOptions::nemo();
            o.loss = pr::parse_reward_aware_loss(fz::pick_name(f, pr::detail::reward_aware_table));
            o.beta = fz::pick(f, {0.2, 1e-300, 1e8, 1e300});
            o.gt_reward_scale = fz::pick(f, {1.0, 0.0, -1.0, 1e300});
            o.preference_loss_weight = fz::pick(f, {1.0, 0.0, 1e300});
            o.sft_loss_weight = fz::pick(f, {0.0, 1.0, 1e300});
            o.num_pairs = count(f);
            fz::trace() << "reward_aware loss " << static_cast<int>(o.loss) << " beta " << o.beta
                        << " eta " << o.gt_reward_scale << " wp " << o.preference_loss_weight
                        << " ws " << o.sft_loss_weight << '\n';
            fz::run(fn, [&] {
                check(fn, pr::reward_aware_po_loss(pc, pr_, rc, rr, wc, wr, o, sink.out()), sink);
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

// Fuzz target: the distillation objectives beside the dense divergences: forward KL to a
// top-k teacher (both tail rules), DAC-KL (top-p region), TAID, NKD and SinKD (Sinkhorn).
#include <rlpo/distill/nkd.hpp>
#include <rlpo/distill/sinkhorn.hpp>
#include <rlpo/distill/taid.hpp>
#include <rlpo/distill/topk.hpp>

#include <algorithm>
#include <numeric>

#include "fuzz_common.hpp"
#include "known_issues.hpp"

namespace {

namespace rd = rlpo::distill;
using rlpo::Index;
using rlpo::Mat;

template <class S>
void one(FuzzedDataProvider& f) {
    const int entry = f.ConsumeIntegralInRange<int>(0, 4);
    const Index B = f.ConsumeIntegralInRange<Index>(0, 6);
    const Index T = f.ConsumeIntegralInRange<Index>(0, entry == 4 ? 4 : 12);
    const Index V = f.ConsumeIntegralInRange<Index>(0, 40);
    const Index N = B * T;
    static const char* names[] = {"forward_kl_topk", "dac_kl", "taid", "nkd", "sinkhorn"};
    const char* fn = names[entry];
    fz::trace() << fn << "<" << (sizeof(S) == 4 ? "float" : "double") << "> B " << B << " T " << T
                << " V " << V << '\n';
    const rlpo::Normalizer norm = fz::normalizer(f);
    Mat<S> m = fz::mask<S>(f, B, T);
    Mat<S> z = fz::matrix<S>(f, N, V, fz::Dom::Logit);
    Mat<S> y =
        f.ConsumeIntegralInRange<int>(0, 4) == 0 ? z : fz::matrix<S>(f, N, V, fz::Dom::Logit);
    fz::poison_rows(f, z, m, true, "student_logits");
    fz::poison_rows(f, y, m, entry != 0, "teacher_logits");
    const auto on = [&](Index n) { return T > 0 && m(n / T, n % T) != 0; };
    for (Index n = 0; n < N; ++n) {
        if (!on(n)) continue;
        for (Index j = 0; j < V; ++j)
            if (z(n, j) == std::numeric_limits<S>::infinity() ||
                (entry != 0 && y(n, j) == std::numeric_limits<S>::infinity()))
                fz::require_throw("+inf logit in an unmasked row");
    }
    fz::Sink<S> sink;
    sink.decode(f, N, V);
    const double tau = fz::pick(f, {1.0, 1.0, 2.0, 0.5, 1e-3, 100.0});
    const bool tau2 = f.ConsumeBool();
    fz::trace() << "tau " << tau << " tau2 " << tau2 << '\n';
    fz::dump("mask", m);
    fz::dump("student_logits", z);
    const auto masked = [&](Index n, Index) { return !on(n); };
    if (entry == 0) {
        const Index K = std::min<Index>(V, f.ConsumeIntegralInRange<Index>(0, 8));
        Mat<double> idx(N, K);
        Mat<S> lp(N, K);
        const int style = f.ConsumeIntegralInRange<int>(0, 3);
        for (Index n = 0; n < N; ++n) {
            // the teacher's log-softmax (style 0, 1: its top-k; 2: random entries of it; 3:
            // raw draws)
            std::vector<double> ls(static_cast<std::size_t>(V));
            double mx = -std::numeric_limits<double>::infinity();
            for (Index j = 0; j < V; ++j) mx = std::max(mx, static_cast<double>(y(n, j)));
            double s = 0;
            for (Index j = 0; j < V; ++j) s += std::exp(static_cast<double>(y(n, j)) - mx);
            for (Index j = 0; j < V; ++j)
                ls[static_cast<std::size_t>(j)] = static_cast<double>(y(n, j)) - mx - std::log(s);
            std::vector<Index> order(static_cast<std::size_t>(V));
            std::iota(order.begin(), order.end(), Index(0));
            if (style < 2)
                std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) {
                    return ls[static_cast<std::size_t>(a)] > ls[static_cast<std::size_t>(b)];
                });
            else
                for (Index j = V - 1; j > 0; --j)
                    std::swap(
                        order[static_cast<std::size_t>(j)],
                        order[static_cast<std::size_t>(f.ConsumeIntegralInRange<Index>(0, j))]);
            for (Index k = 0; k < K; ++k) {
                const Index j = order[static_cast<std::size_t>(k)];
                idx(n, k) = static_cast<double>(j);
                lp(n, k) = static_cast<S>(style == 3 ? fz::draw<S>(f, fz::Dom::LogProb)
                                                     : ls[static_cast<std::size_t>(j)]);
            }
        }
        if (f.ConsumeIntegralInRange<int>(0, 15) == 0 && N > 0 && K > 0)
            idx(f.ConsumeIntegralInRange<Index>(0, N - 1), 0) = fz::pick(f, {-1.0, 1e30, 0.5});
        rd::TopKOptions o;
        o.tail = f.ConsumeBool() ? rd::TopKTail::Bucket : rd::TopKTail::Renormalize;
        o.temperature = tau;
        o.temperature_squared = tau2;
        fz::trace() << "tail " << static_cast<int>(o.tail) << " K " << K << " style " << style
                    << '\n';
        fz::dump("teacher_indices", idx);
        fz::dump("teacher_logprobs", lp);
        for (Index n = 0; n < N; ++n)
            for (Index k = 0; k < K; ++k)
                if (on(n) && std::isnan(static_cast<double>(lp(n, k))))
                    fz::require_throw("NaN teacher log-prob");
        if (fz::known::topk(o, z, idx, lp, m)) return;
        fz::run(fn, [&] {
            const auto r = rd::forward_kl_topk(z, idx, lp, m, o, norm, sink.out());
            fz::check_result(fn, r, sink, N, V, masked);
        });
        return;
    }
    fz::dump("teacher_logits", y);
    if (entry == 1) {
        rd::DacKLOptions o;
        o.top_p = fz::pick(f, {0.9, 1.0, 1e-8, 0.5, 0.999999});
        o.temperature = tau;
        o.temperature_squared = tau2;
        fz::trace() << "top_p " << o.top_p << '\n';
        if (fz::known::dac_kl(o, z, y, m)) return;
        fz::run(fn, [&] {
            const auto r = rd::dac_kl(z, y, m, o, norm, sink.out());
            fz::check_result(fn, r, sink, N, V, masked);
        });
    } else if (entry == 2) {
        rd::TAIDOptions o;
        o.t = fz::pick(f, {0.4, 0.0, 1.0, 1e-8, 1.0 - 1e-8});
        o.temperature = tau;
        o.temperature_squared = tau2;
        fz::trace() << "t " << o.t << '\n';
        if (fz::known::taid(o, z, y, m)) return;
        fz::run(fn, [&] {
            const auto r = rd::taid(z, y, m, o, norm, sink.out());
            fz::check_result(fn, r, sink, N, V, masked);
        });
    } else if (entry == 3) {
        rd::NKDOptions o;
        o.gamma = fz::pick(f, {1.5, 0.0, 1e-8, 1e6});
        o.temperature = tau;
        std::vector<Index> targets;
        if (f.ConsumeBool()) {
            for (Index n = 0; n < N; ++n)
                targets.push_back(V > 0 ? f.ConsumeIntegralInRange<Index>(0, V - 1) : 0);
            if (f.ConsumeIntegralInRange<int>(0, 15) == 0 && N > 0)
                targets[0] = fz::pick(f, {-1.0, 1e6}) < 0 ? -1 : V;
        }
        fz::trace() << "gamma " << o.gamma << " targets";
        for (Index t : targets) fz::trace() << ' ' << t;
        fz::trace() << '\n';
        if (fz::known::nkd(o, z, y, m, targets)) return;
        fz::run(fn, [&] {
            const auto r = rd::nkd(z, y, m, targets, o, norm, sink.out());
            fz::check_result(fn, r, sink, N, V, masked);
        });
    } else {
        rd::SinkhornOptions o;
        o.temperature = fz::pick(f, {2.0, 1.0, 1e-3, 100.0});
        o.epsilon = fz::pick(f, {0.1, 1e-3, 10.0, 1e-8});
        o.iterations = static_cast<int>(fz::pick(f, {20, 1, 3, 50}));
        o.scale = fz::pick(f, {1.0, -1.0, 0.0, 1e300});
        fz::trace() << "sinkhorn tau " << o.temperature << " eps " << o.epsilon << " iters "
                    << o.iterations << " scale " << o.scale << '\n';
        if (fz::known::sinkhorn(o, z, y, m)) return;
        fz::run(fn, [&] {
            const auto r = rd::sinkhorn(z, y, m, o, sink.out());
            fz::check_result(fn, r, sink, N, V, masked);
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

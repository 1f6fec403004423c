// Fuzz target: distill::divergence over every kind of the parser's table (forward / reverse
// KL, JSD, skew KL, skew reverse KL, TVD, χ²), temperatures, β / α at and inside their
// bounds, the fast path's tuning switches, the masked and the unmasked overloads.
#include <rlpo/distill/divergences.hpp>

#include "fuzz_common.hpp"
#include "known_issues.hpp"

namespace {

namespace rd = rlpo::distill;
using rlpo::Index;
using rlpo::Mat;

template <class S>
void one(FuzzedDataProvider& f) {
    const Index B = f.ConsumeIntegralInRange<Index>(0, 6);
    const Index T = f.ConsumeIntegralInRange<Index>(0, 12);
    const Index V = f.ConsumeIntegralInRange<Index>(0, 40);
    const char* name = fz::pick_name(f, rd::detail::divergence_table);
    rd::DistillOptions o = rd::DistillOptions::make(rd::parse_divergence(name));
    o.temperature = fz::pick(f, {1.0, 1.0, 0.9, 2.0, 1e-3, 100.0, 1e-30});
    o.temperature_squared = f.ConsumeBool();
    o.beta = fz::pick(f, {0.5, 0.0, 1.0, 1e-8, 1.0 - 1e-8, 0.1, 0.9});
    o.alpha = fz::pick(f, {0.1, 0.0, 1.0, 1e-8, 1.0 - 1e-8, 0.5});
    if (f.ConsumeBool()) o.tuning.split_bytes = 0;
    if (f.ConsumeBool()) o.tuning.lean_bytes = 0;
    o.tuning.lean_log_form = f.ConsumeBool();
    o.tuning.shuffle_ranges = f.ConsumeBool();
    const bool flat = f.ConsumeIntegralInRange<int>(0, 5) == 0;
    fz::trace() << "divergence<" << (sizeof(S) == 4 ? "float" : "double") << "> B " << B << " T "
                << T << " V " << V << " kind " << name << " tau " << o.temperature << " tau2 "
                << o.temperature_squared << " beta " << o.beta << " alpha " << o.alpha << " split0 "
                << (o.tuning.split_bytes == 0) << " lean0 " << (o.tuning.lean_bytes == 0)
                << " lean_log " << o.tuning.lean_log_form << " flat " << flat << '\n';
    const rlpo::Normalizer norm = fz::normalizer(f);
    Mat<S> m = flat ? Mat<S>(Mat<S>::Ones(B * T, 1)) : fz::mask<S>(f, B, T);
    const Index TT = m.cols();
    Mat<S> z = fz::matrix<S>(f, B * T, V, fz::Dom::Logit);
    Mat<S> y =
        f.ConsumeIntegralInRange<int>(0, 4) == 0 ? z : fz::matrix<S>(f, B * T, V, fz::Dom::Logit);
    fz::poison_rows(f, z, m, true, "student_logits");
    fz::poison_rows(f, y, m, true, "teacher_logits");
    for (Index n = 0; n < z.rows(); ++n) {
        if (TT == 0 || m(n / TT, n % TT) == 0) continue;
        for (Index j = 0; j < V; ++j)
            if (z(n, j) == std::numeric_limits<S>::infinity() ||
                y(n, j) == std::numeric_limits<S>::infinity())
                fz::require_throw("+inf logit in an unmasked row");
    }
    fz::Sink<S> sink;
    sink.decode(f, B * T, V);
    fz::dump("mask", m);
    fz::dump("student_logits", z);
    fz::dump("teacher_logits", y);
    if (fz::known::divergence(o, z, y, m, norm)) return;
    const auto masked = [&](Index n, Index) { return TT == 0 || m(n / TT, n % TT) == 0; };
    fz::run("divergence", [&] {
        const auto r = flat ? rd::divergence(z, y, o, sink.out())
                            : rd::divergence(z, y, m, o, norm, sink.out());
        fz::check_result("divergence", r, sink, B * T, V, masked);
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
